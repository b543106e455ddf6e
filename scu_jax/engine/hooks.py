"""The engine's side effects, as hooks (CLU `periodic_actions` style): progress and summaries.

The engine calls `on_block` after reading each block's numbers and `on_epoch` after each epoch;
both see host numbers only, one block after the device produced them. A hook that needs the
state itself at the end of some epochs (a checkpoint) says so in `needs_state`.

CLU's own `periodic_actions` and `metric_writers` import TensorFlow when imported (clu 0.0.12),
a dependency of several hundred megabytes that nothing else here needs; these are the small
equivalents, with CLU's interfaces: a `MetricWriter` has `write_scalars(step, scalars)`,
`flush()` and `close()`; `ReportProgress` logs the rate and an ETA.
"""

from __future__ import annotations

import math
import time
from typing import Any, Mapping, NamedTuple, Protocol, Sequence

import numpy as np
from absl import logging


class BlockResult(NamedTuple):
    """A block's numbers: `columns[field][i]` is step `first_step + i + 1`'s value of a metric."""

    run: str
    phase: str
    epoch: int  # 0-based
    first_step: int  # steps done before the block
    columns: dict[str, np.ndarray]


class EpochResult(NamedTuple):
    """An epoch's summary: its number, the steps so far and the mean of each metric (plus the
    phase's evaluation, if any)."""

    run: str
    phase: str
    epoch: int  # 0-based
    steps_done: int
    summary: dict[str, Any]
    report: Any  # the engine's `Report` of the running call, its times up to this epoch


class Hook:
    """Does nothing; subclasses override what they need."""

    def on_block(self, result: BlockResult) -> None:
        del result

    def on_epoch(self, result: EpochResult, state: Any | None) -> None:
        """`state` is the state after the epoch where `needs_state` asked for it, else None."""
        del result, state

    def needs_state(self, epochs_done: int) -> bool:
        del epochs_done
        return False

    def on_end(self, run: str, report: Any) -> None:
        """After the run's last block, with the engine's `Report`."""
        del run, report


class MetricWriter(Protocol):
    """CLU's `metric_writers.MetricWriter` interface (the part the engine uses)."""

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class WriteSummaries(Hook):
    """Writes every epoch's summary as `<phase>/epoch/<metric>` (at the step the epoch ended),
    and the metrics of every `every_steps`-th step as `<phase>/<metric>` (0: epochs only), to a
    `MetricWriter`."""

    def __init__(self, writer: MetricWriter, every_steps: int = 0):
        self.writer = writer
        self.every_steps = every_steps

    def on_block(self, result: BlockResult) -> None:
        if not self.every_steps:
            return
        names = list(result.columns)
        count = len(result.columns[names[0]])
        first = -(result.first_step + 1) % self.every_steps  # the block's first step on the grid
        for i in range(first, count, self.every_steps):
            self.writer.write_scalars(result.first_step + i + 1, {
                f"{result.phase}/{n}": float(result.columns[n][i]) for n in names})

    def on_epoch(self, result: EpochResult, state: Any | None) -> None:
        del state
        scalars = {f"{result.phase}/epoch/{n}": float(v) for n, v in result.summary.items()
                   if n not in ("epoch", "steps") and v is not None}
        self.writer.write_scalars(result.steps_done, scalars)


class ReportProgress(Hook):
    """A progress line at most every `every_seconds` and at the end of each phase: run, phase,
    epoch, step, the latest loss, the steps per second since the first block, and the ETA."""

    def __init__(self, total_steps: int, every_seconds: float, *, last_epochs: Sequence[int] = ()):
        self.total_steps = total_steps
        self.every_seconds = every_seconds
        self.last_epochs = set(last_epochs)  # 0-based epochs that end a phase: always reported
        self.timed_from: tuple[float, int] | None = None
        self.last_report = -math.inf

    def on_block(self, result: BlockResult) -> None:
        now = time.perf_counter()
        done = result.first_step + len(result.columns["loss"])
        if self.timed_from is None:  # the rate counts the steps after the first block read
            self.timed_from = (now, done)
        if now - self.last_report < self.every_seconds:
            return
        self._report(result.run, result.phase, result.epoch, done,
                     float(result.columns["loss"][-1]) if len(result.columns["loss"]) else math.nan,
                     now)

    def on_epoch(self, result: EpochResult, state: Any | None) -> None:
        del state
        if result.epoch in self.last_epochs:
            self._report(result.run, result.phase, result.epoch, result.steps_done,
                         result.summary.get("loss", math.nan), time.perf_counter(),
                         extra=result.summary)

    def _report(self, run: str, phase: str, epoch: int, done: int, loss: float, now: float,
                extra: Mapping[str, Any] | None = None) -> None:
        self.last_report = now
        elapsed, steps = now - self.timed_from[0], done - self.timed_from[1]
        if elapsed > 0 and steps > 0:
            rate = steps / elapsed
            speed = f"{rate:.0f} steps/s, ETA {(self.total_steps - done) / rate:.0f}s"
        else:
            speed = "starting"
        others = "".join(f" {k} {v:.4f}" for k, v in (extra or {}).items()
                         if k not in ("epoch", "steps", "loss") and isinstance(v, float))
        logging.info("%s %s epoch %d step %d/%d loss %.5f%s, %s", run, phase, epoch + 1, done,
                     self.total_steps, loss, others, speed)

    def on_end(self, run: str, report: Any) -> None:
        logging.info("%s: %d steps in %d epochs, %.2f s (+%.2f s compiling)", run, report.steps,
                     report.epochs, report.seconds, report.compile_seconds)

"""SIGTERM and SIGINT: a run stops at its next epoch boundary, saves what it can, and says so.

A binary installs `handle_signals` (a batch scheduler's preemption sends SIGTERM; Ctrl-C, SIGINT).
The first signal sets a flag that every engine run reads at each epoch boundary (`StopOnSignal`,
which the runs add after their checkpoint hook): a run that checkpoints (training, retraining)
saves that epoch, then stops; one that does not (the erased-data methods, seconds long) stops. A
signal outside such a run (loading data, evaluating) stops at once. Either way `Interrupted`
reaches the binary, which prints one line and exits with 128 + the signal's number; the same
command resumes from the last checkpoint, to the results of an uninterrupted run. A second
signal exits at once: the last complete checkpoint is kept (Orbax writes each under a temporary
name and renames it when complete).

An experiment's worker processes install `handle_signals(immediate_second=False)`: a signal
only ever stops them at an epoch boundary, or before their next task (`check`), never in the
middle of the pool's own code; the parent forwards the signal it gets (a process group's reaches
them too), and the parent alone exits at once on a second signal (its workers die with it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import Any, Iterator

from absl import logging

from scu_jax.engine import Hook
from scu_jax.errors import Interrupted

SIGNALS = (signal.SIGTERM, signal.SIGINT)
_state: dict[str, Any] = {"received": None, "boundary_runs": 0, "program": "", "second": True}


def received() -> int | None:
    """The first signal received since `handle_signals`, if any."""
    return _state["received"]


def signal_name(number: int) -> str:
    return signal.Signals(number).name


def _handle(number: int, frame) -> None:
    del frame
    if _state["received"] is not None:
        if not _state["second"]:
            return  # a worker: the parent decides when to stop waiting
        print(f"{_state['program']}: {signal_name(number)} again: exiting now; the last complete "
              "checkpoint is kept", file=sys.stderr, flush=True)
        os._exit(128 + number)
    _state["received"] = number
    if _state["boundary_runs"] == 0 and _state["second"]:
        raise Interrupted(number, f"interrupted by {signal_name(number)}")
    if _state["second"]:  # a worker's parent says it once for the sweep
        logging.warning("%s: stopping at the next epoch boundary (a second signal exits at once)",
                        signal_name(number))


def handle_signals(program: str, *, immediate_second: bool = True) -> None:
    """Installs the handlers of SIGTERM and SIGINT (the module docstring)."""
    _state.update(received=None, program=program, second=immediate_second)
    for number in SIGNALS:
        signal.signal(number, _handle)


def check() -> None:
    """Raises `Interrupted` if a signal has been received (before a task starts)."""
    if _state["received"] is not None:
        raise Interrupted(_state["received"], f"interrupted by {signal_name(_state['received'])}")


@contextlib.contextmanager
def stops_at_boundaries() -> Iterator[None]:
    """Marks an engine run with a `StopOnSignal` hook: a signal now waits for its boundary."""
    _state["boundary_runs"] += 1
    try:
        check()  # one that arrived before this run could read it
        yield
    finally:
        _state["boundary_runs"] -= 1


class StopOnSignal(Hook):
    """Stops a run at the first epoch boundary after a signal; the hooks before it in the run's
    list (a checkpoint's) see that epoch's state first.

    Args:
      total_epochs: the run's epochs, for the message.
      saved: whether the run saved that epoch (a checkpointed run) or saves nothing.
      what: the run's name in the message.
    """

    def __init__(self, total_epochs: int, *, saved: bool, what: str):
        self.total_epochs, self.saved, self.what = total_epochs, saved, what

    def needs_state(self, epochs_done: int) -> bool:
        del epochs_done
        return _state["received"] is not None

    def on_epoch(self, result, state) -> None:
        number = _state["received"]
        if number is None or state is None:
            return
        done = result.epoch + 1
        if self.saved:
            outcome = "saved; the same command resumes"
        else:
            outcome = f"{self.what} keeps no checkpoint of its own; the same command reruns it"
        raise Interrupted(number, f"interrupted by {signal_name(number)} at epoch {done} of "
                                  f"{self.total_epochs} ({self.what}): {outcome}")

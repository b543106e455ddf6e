"""Log filtering shared by every command that runs training or unlearning.

Orbax logs every save at INFO and warns whenever a directory opened read-only on purpose is
read-only; both would drown the progress lines. When a save or a restore fails it logs the
exception, traceback and all, from each of its threads, before raising it to the caller, which
reports it in one line (`runs/checkpointing.py`). Installed by the binaries when they parse flags and
by the experiment workers, which run the same code in their own processes.
"""

from __future__ import annotations

import logging


class QuietLibraries(logging.Filter):
    """Keeps Orbax's per-save INFO chatter, its notices that a directory we opened read-only on
    purpose is read-only, and its tracebacks of a failure it raises to us anyway, out of the
    log; other warnings still pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "/orbax/" not in record.pathname:
            return True
        if record.levelno < logging.WARNING or record.levelno == logging.ERROR:
            return False
        message = record.getMessage()
        return "read only" not in message and "read_only=True" not in message


def quiet_library_logs() -> None:
    """Installs `QuietLibraries` on absl's logger (the one Orbax logs through)."""
    logging.getLogger("absl").addFilter(QuietLibraries())

"""Every error scu-jax raises on purpose, in one place.

Each message is one line that names what to change; the binaries turn the usage errors into that
line and exit status 2 (`binaries/common.py`), before any work starts where the check allows.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A config field holds a value outside what is allowed; the message is one line."""


class DatasetUnavailableError(ValueError):
    """A dataset is not present (or not readable) in its data directory."""


class CheckpointMismatchError(ValueError):
    """A workdir holds a checkpoint that does not belong to the requested configuration."""


class CheckpointReadError(ValueError):
    """A checkpoint exists but cannot be read (truncated, corrupted or of another layout)."""


class NonFiniteError(RuntimeError):
    """A loss or a parameter became NaN or infinite; the message names the run, phase and step."""


class LedgerMismatchError(RuntimeError):
    """A deployment's ledger and its saved versions disagree (`scu-forget`); the message is one
    line naming the version. Not a usage error: the deployment itself is inconsistent."""

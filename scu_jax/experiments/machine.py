"""What a timing was measured on: platform, CPU, JAX version, backend and devices."""

from __future__ import annotations

import contextlib
import os
import pathlib
import platform
from typing import Any

import jax


def machine_info() -> dict[str, Any]:
    """The machine and JAX set-up of this process, as JSON-able values."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"platform": platform.platform(), "python": platform.python_version(),
            "cpu": cpu, "cpu_count": os.cpu_count(), "jax": jax.__version__,
            "backend": jax.default_backend(),
            "devices": [str(device) for device in jax.devices()]}

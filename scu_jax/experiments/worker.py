"""What runs in a worker process (or in the scheduler's own with `workers=0`): one task."""

from __future__ import annotations

import ctypes
import json
import os
import pathlib
import signal
import sys
import time
from typing import Any

import jax
from absl import logging

from scu_jax.config import config_from_json
from scu_jax.errors import NonFiniteError
from scu_jax.experiments.grid import ORIGINAL
from scu_jax.experiments.workdir import SAMPLES_FILE
from scu_jax.runs import evaluate, train, unlearn
from scu_jax.runs.files import RESULTS_FILE
from scu_jax.runs.logs import quiet_library_logs


def _evaluate_original(task: dict[str, Any], out_dir: pathlib.Path) -> dict[str, Any]:
    results = evaluate.evaluate_workdir(task["train_dir"], reference_workdir=task["reference_dir"],
                                       output=str(out_dir / RESULTS_FILE),
                                       samples_file=str(out_dir / SAMPLES_FILE))
    trained = json.loads((pathlib.Path(task["train_dir"]) / RESULTS_FILE).read_text())
    results.update({key: trained[key] for key in
                    ("train_seconds", "compile_seconds", "epochs", "steps")})
    return results


def run_task(task: dict[str, Any]) -> dict[str, Any]:
    """Runs one task: `train` (a group's original system) or `cell`; returns what it produced."""
    started = time.perf_counter()
    config = config_from_json(task["config"])
    if task["kind"] == "train":
        train.train_and_evaluate(config, task["train_dir"])
        return {"seconds": time.perf_counter() - started}
    out_dir = pathlib.Path(task["out_dir"])
    try:
        if task["method"] == ORIGINAL:
            results = _evaluate_original(task, out_dir)
        else:
            results = unlearn.unlearn_and_evaluate(config, task["train_dir"], str(out_dir),
                                                   reference_workdir=task["reference_dir"],
                                                   samples_file=str(out_dir / SAMPLES_FILE))
        results = {key: value for key, value in results.items() if key != "history"}
        results["status"] = "ok"
    except NonFiniteError as error:
        # A diverging baseline is a result of the sweep, not a reason to stop it.
        results = {"status": "non-finite", "error": str(error)}
    results["task_seconds"] = time.perf_counter() - started
    return results


def worker_init(cache_dir: str) -> None:
    """Runs in each spawned worker: die with the parent, keep logs quiet, share compilations."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGKILL)
        if os.getppid() == 1:  # the parent died before prctl took effect
            os._exit(1)
    quiet_and_cached(cache_dir)


def quiet_and_cached(cache_dir: str) -> None:
    """Warnings only in the log; JAX's persistent compilation cache in `cache_dir` ("": none)."""
    quiet_library_logs()
    logging.set_verbosity(logging.WARNING)
    if cache_dir:
        jax.config.update("jax_compilation_cache_dir", cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

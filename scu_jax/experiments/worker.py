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
import ml_collections
from absl import logging

from scu_jax.config import config_from_json
from scu_jax.errors import NonFiniteError
from scu_jax.experiments.grid import ORIGINAL
from scu_jax.experiments.workdir import SAMPLES_FILE
from scu_jax.runs import evaluate, signals, train, unlearn
from scu_jax.runs.files import RESULTS_FILE
from scu_jax.runs.logs import quiet_library_logs


def _evaluate_original(task: dict[str, Any], out_dir: pathlib.Path,
                       config: ml_collections.ConfigDict) -> dict[str, Any]:
    # Read on the cell's split where only part of D_e is known (the same system, another D_e).
    partial = config.forget.known_fraction < 1
    results = evaluate.evaluate_workdir(task["train_dir"], reference_workdir=task["reference_dir"],
                                       output=str(out_dir / RESULTS_FILE),
                                       samples_file=str(out_dir / SAMPLES_FILE),
                                       config=config if partial else None)
    trained = json.loads((pathlib.Path(task["train_dir"]) / RESULTS_FILE).read_text())
    # Its training's times (with `runs_together`, where the seeds trained as one program).
    results.update({key: trained[key] for key in
                    ("train_seconds", "compile_seconds", "epochs", "steps", "runs_together")
                    if key in trained})
    return results


def run_task(task: dict[str, Any]) -> dict[str, Any]:
    """Runs one task: `train` (a group's original system), `cell`, or `together` (tasks that
    differ by their seed alone, as one program); returns what it produced."""
    signals.check()  # a signal before the task began: the sweep is stopping
    started = time.perf_counter()
    if task["kind"] == "together":
        return _run_together(task, started)
    config = config_from_json(task["config"])
    if task["kind"] == "train":
        train.train_and_evaluate(config, task["train_dir"])
        return {"seconds": time.perf_counter() - started}
    out_dir = pathlib.Path(task["out_dir"])
    try:
        if task["method"] == ORIGINAL:
            results = _evaluate_original(task, out_dir, config)
        else:
            results = unlearn.unlearn_and_evaluate(config, task["train_dir"], str(out_dir),
                                                   reference_workdir=task["reference_dir"],
                                                   samples_file=str(out_dir / SAMPLES_FILE))
        results = _row_values(results)
    except NonFiniteError as error:
        # A diverging baseline is a result of the sweep, not a reason to stop it.
        results = {"status": "non-finite", "error": str(error)}
    results["task_seconds"] = time.perf_counter() - started
    return results


def _row_values(results: dict[str, Any] | NonFiniteError) -> dict[str, Any]:
    if isinstance(results, NonFiniteError):
        return {"status": "non-finite", "error": str(results)}
    return {**{key: value for key, value in results.items() if key != "history"}, "status": "ok"}


def _run_together(task: dict[str, Any], started: float) -> dict[str, Any]:
    """A `together` task: its members' trainings, or its members' cells (one output each)."""
    members = task["members"]
    configs = [config_from_json(member["config"]) for member in members]
    if task["of"] == "train":
        train.train_and_evaluate_many(configs, [member["train_dir"] for member in members])
        return {"seconds": time.perf_counter() - started}
    outcomes = unlearn.unlearn_and_evaluate_many(
        configs, [member["train_dir"] for member in members],
        [member["out_dir"] for member in members],
        reference_workdirs=[member["reference_dir"] for member in members],
        samples_files=[str(pathlib.Path(member["out_dir"]) / SAMPLES_FILE) for member in members])
    seconds = time.perf_counter() - started
    return {"outputs": [{**_row_values(outcome), "task_seconds": seconds} for outcome in outcomes],
            "task_seconds": seconds}


def worker_init(cache_dir: str) -> None:
    """Runs in each spawned worker: die with the parent, keep logs quiet, share compilations."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGKILL)
        if os.getppid() == 1:  # the parent died before prctl took effect
            os._exit(1)
    signals.handle_signals("scu-experiment worker", immediate_second=False)
    quiet_and_cached(cache_dir)


def quiet_and_cached(cache_dir: str) -> None:
    """Warnings only in the log; JAX's persistent compilation cache in `cache_dir` ("": none)."""
    quiet_library_logs()
    logging.set_verbosity(logging.WARNING)
    if cache_dir:
        jax.config.update("jax_compilation_cache_dir", cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

"""The experiment directory: its layout, whose experiment it holds, and one writer at a time.

```
WORKDIR/experiment.json       the experiment config, and every run of it (machine, workers, time)
WORKDIR/results.jsonl         one JSON line per finished cell, appended by one process, fsync'ed
WORKDIR/results.csv           the same rows as a table (rewritten atomically after every cell)
WORKDIR/runs/<group>/train    the original system of a group (scu-train layout)
WORKDIR/runs/<group>/<cell>   a method's unlearned system (scu-unlearn layout), samples.npz
WORKDIR/figures, REPORT.md    written by `scu_jax.experiments.report` (and by scu-report)
WORKDIR/cache/jax             JAX's persistent compilation cache (unless one is named)
```
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import pathlib
import shutil
from typing import Any, Callable, Iterator

import ml_collections

from scu_jax.config import first_difference
from scu_jax.errors import CheckpointMismatchError
from scu_jax.experiments.machine import machine_info
from scu_jax.runs.files import check_workdir, write_json_atomic

EXPERIMENT_FILE = "experiment.json"
ROWS_FILE = "results.jsonl"
CSV_FILE = "results.csv"
SAMPLES_FILE = "samples.npz"
REPORT_FILE = "REPORT.md"
FIGURES_DIR = "figures"
RUNS_DIR = "runs"
LOCK_FILE = ".lock"
# Fields of a base config that do not change any result (so a rerun may change them).
_NOT_RESULTS = ("log_every_seconds", "checkpoint_every_epochs", "summary_every_steps")


def group_dir(workdir: str | os.PathLike, group_id: str) -> pathlib.Path:
    """Where a group's systems live: `train`, and one directory per cell name."""
    return pathlib.Path(workdir) / RUNS_DIR / group_id


def result_fingerprint(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The part of an experiment config that decides its rows: a workdir whose fingerprint
    differs holds another experiment."""
    bases = {}
    for dataset, base in config.bases.items():
        plain = json.loads(base.to_json_best_effort())
        for field in _NOT_RESULTS:
            plain.pop(field, None)
        bases[dataset] = plain
    return {"name": config.name, "bases": bases}


def check_experiment_dir(workdir: str | os.PathLike, config: ml_collections.ConfigDict,
                         overwrite: bool) -> pathlib.Path:
    """Refuses (before writing anything) a workdir that holds another experiment or something
    else, unless `overwrite`; returns it as a path."""
    check_workdir(workdir)
    root = pathlib.Path(workdir)
    experiment_file = root / EXPERIMENT_FILE
    if overwrite:
        return root
    if experiment_file.exists():
        try:
            saved = json.loads(experiment_file.read_text())
        except ValueError:
            raise CheckpointMismatchError(f"{experiment_file} is unreadable; use another --workdir "
                                          "or --overwrite") from None
        difference = first_difference(saved.get("fingerprint"), result_fingerprint(config))
        if difference:
            raise CheckpointMismatchError(
                f"{root} holds another experiment ({difference}); use another --workdir or "
                "--overwrite to replace it")
    elif root.exists() and any(root.iterdir()):
        raise FileExistsError(f"--workdir={root} exists and is not an experiment directory; use "
                              "another --workdir")
    return root


def remove_results(root: pathlib.Path) -> None:
    """Deletes what an experiment wrote (for `--overwrite`); the compilation cache stays."""
    for name in (ROWS_FILE, CSV_FILE, EXPERIMENT_FILE, REPORT_FILE):
        (root / name).unlink(missing_ok=True)
    for name in (RUNS_DIR, FIGURES_DIR):
        shutil.rmtree(root / name, ignore_errors=True)


@contextlib.contextmanager
def exclusive(workdir: pathlib.Path) -> Iterator[None]:
    """Holds the workdir's lock: a second scu-experiment in it is refused, not interleaved."""
    handle = open(workdir / LOCK_FILE, "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise FileExistsError(f"another scu-experiment is running in {workdir}; wait for it or "
                              "use another --workdir") from None
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def start_run_record(root: pathlib.Path, config: ml_collections.ConfigDict,
                     workers: int) -> Callable[[float | None, int], None]:
    """Adds this run of the command to experiment.json (with the config and its fingerprint);
    returns `record(seconds, cells_run)`, which updates the run's entry."""
    experiment_file = root / EXPERIMENT_FILE
    previous = json.loads(experiment_file.read_text()) if experiment_file.exists() else {}
    runs = previous.get("runs", [])
    this_run = {"started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                "workers": workers, "machine": machine_info(), "cells_run": 0, "seconds": None}
    runs.append(this_run)
    payload = {"fingerprint": result_fingerprint(config),
               "config": json.loads(config.to_json_best_effort()), "runs": runs}

    def record(seconds: float | None, cells_run: int) -> None:
        this_run.update(seconds=seconds, cells_run=cells_run)
        write_json_atomic(experiment_file, payload)

    record(None, 0)
    return record

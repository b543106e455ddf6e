"""The experiment directory: its layout, whose experiment it holds, and one writer at a time.

```
WORKDIR/experiment.json       the experiment config, and every run of it (machine, workers, time)
WORKDIR/results.jsonl         one JSON line per finished cell, appended by one process, fsync'ed
WORKDIR/results.shard-i-of-n.jsonl   the same, for the cells of shard i of n (`--shard`)
WORKDIR/results.csv           every file's rows as a table (rewritten atomically after every cell
                              of an unsharded run, and by scu-report)
WORKDIR/runs/<group>/train    the original system of a group (scu-train layout)
WORKDIR/runs/<group>/<cell>   a method's unlearned system (scu-unlearn layout), samples.npz
WORKDIR/figures, REPORT.md    written by `scu_jax.experiments.report` (and by scu-report)
WORKDIR/cache/jax             JAX's persistent compilation cache (unless one is named);
                              cache/jax-shard-i-of-n for a shard
WORKDIR/.lock*                the locks below
```

Locks (`flock`, so the workdir's filesystem must support it across machines: local disks,
NFSv4, Lustre mounted with `flock`, GPFS): an unsharded run holds `.lock` exclusively; a shard
holds it shared (shards run together, never beside an unsharded run), `.lock.shard-i-of-n`
exclusively (one process per shard) and `.lock.shards-n` shared (no shards of another count at
the same time, whose groups would overlap). `.lock.experiment` is held for a moment around each
update of experiment.json, which every run rewrites.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import pathlib
import re
import shutil
import uuid
from typing import Any, Callable, Iterator

import ml_collections

from scu_jax.config import first_difference
from scu_jax.errors import CheckpointMismatchError
from scu_jax.experiments.machine import machine_info
from scu_jax.experiments.shards import Shard
from scu_jax.runs.files import check_workdir, write_json_atomic

EXPERIMENT_FILE = "experiment.json"
ROWS_FILE = "results.jsonl"
CSV_FILE = "results.csv"
SAMPLES_FILE = "samples.npz"
REPORT_FILE = "REPORT.md"
RELEARNING_FILE = "relearning.json"  # experiments/relearning.py: the attack's curves
FIGURES_DIR = "figures"
RUNS_DIR = "runs"
LOCK_FILE = ".lock"
_EXPERIMENT_LOCK = ".lock.experiment"
_SHARD_ROWS = re.compile(r"results\.shard-(\d+)-of-(\d+)\.jsonl")
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


def rows_file(shard: Shard | None) -> str:
    """The file a run appends its rows to: results.jsonl, or a shard's own."""
    return ROWS_FILE if shard is None else f"results.{shard.name}.jsonl"


def row_files(workdir: str | os.PathLike) -> list[pathlib.Path]:
    """Every rows file in the workdir: results.jsonl, then the shards' (by count, then index)."""
    root = pathlib.Path(workdir)
    shards = sorted((int(match.group(2)), int(match.group(1)), path)
                    for path in root.glob("results.shard-*.jsonl")
                    if (match := _SHARD_ROWS.fullmatch(path.name)))
    unsharded = [root / ROWS_FILE] if (root / ROWS_FILE).exists() else []
    return unsharded + [path for *_, path in shards]


def read_experiment(root: pathlib.Path) -> dict[str, Any]:
    """WORKDIR/experiment.json's content.

    Raises:
      FileNotFoundError: `root` is not an experiment directory.
      ValueError: its experiment.json is not valid JSON.
    """
    experiment_file = root / EXPERIMENT_FILE
    if not experiment_file.exists():
        raise FileNotFoundError(f"{root} holds no {EXPERIMENT_FILE}: not an "
                                "scu-experiment directory")
    try:
        return json.loads(experiment_file.read_text())
    except ValueError:
        raise ValueError(f"{experiment_file} is not valid JSON") from None


def _check_fingerprint(root: pathlib.Path, config: ml_collections.ConfigDict) -> None:
    """Refuses an experiment.json of another experiment (or an unreadable one)."""
    experiment_file = root / EXPERIMENT_FILE
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


def check_experiment_dir(workdir: str | os.PathLike, config: ml_collections.ConfigDict,
                         overwrite: bool) -> pathlib.Path:
    """Refuses (before writing anything) a workdir that holds another experiment or something
    else, unless `overwrite`; returns it as a path.

    A workdir that holds only locks and experiment.json (or its temporary file) is one that
    another shard of the sweep is creating right now; `start_run_record` checks its fingerprint
    under the lock once the file is written.
    """
    check_workdir(workdir)
    root = pathlib.Path(workdir)
    if overwrite:
        return root
    starting = (LOCK_FILE, f".{pathlib.Path(EXPERIMENT_FILE).stem}.", EXPERIMENT_FILE)
    if (root / EXPERIMENT_FILE).exists():
        _check_fingerprint(root, config)
    elif root.exists() and any(not path.name.startswith(starting) for path in root.iterdir()):
        raise FileExistsError(f"--workdir={root} exists and is not an experiment directory; use "
                              "another --workdir")
    return root


def remove_results(root: pathlib.Path) -> None:
    """Deletes what an experiment wrote (for `--overwrite`), every shard's rows included; the
    compilation cache stays."""
    for path in row_files(root):
        path.unlink(missing_ok=True)
    for name in (CSV_FILE, EXPERIMENT_FILE, REPORT_FILE, RELEARNING_FILE):
        (root / name).unlink(missing_ok=True)
    for name in (RUNS_DIR, FIGURES_DIR):
        shutil.rmtree(root / name, ignore_errors=True)


@contextlib.contextmanager
def _flock(path: pathlib.Path, operation: int, refused: str | None) -> Iterator[None]:
    """Holds `path`'s flock (`fcntl.LOCK_EX` or `LOCK_SH`). Where another process holds it, raises
    FileExistsError(`refused`), or with `refused` None waits for it."""
    # Read and write access: NFS emulates flock with POSIX locks, which need both.
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, operation | (0 if refused is None else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(descriptor)
        raise FileExistsError(refused) from None
    try:
        yield
    finally:
        fcntl.flock(descriptor, fcntl.LOCK_UN)
        os.close(descriptor)


def exclusive(workdir: pathlib.Path) -> contextlib.AbstractContextManager[None]:
    """Holds the workdir's lock: a second scu-experiment (or any shard) in it is refused, not
    interleaved."""
    return _flock(workdir / LOCK_FILE, fcntl.LOCK_EX,
                  f"another scu-experiment is running in {workdir}; wait for it or use another "
                  "--workdir")


def _held(path: pathlib.Path) -> bool:
    """Whether another process holds `path`'s lock (asked under `.lock.experiment`, so that none
    takes it between the question and what the caller does next)."""
    try:
        with _flock(path, fcntl.LOCK_EX, ""):
            return False
    except FileExistsError:
        return True


@contextlib.contextmanager
def exclusive_shard(workdir: pathlib.Path, shard: Shard) -> Iterator[None]:
    """Holds a shard's locks: shards of one count run side by side, but not beside an unsharded
    run, a second process of the same shard, or shards of another count."""
    with contextlib.ExitStack() as stack:
        # Taken under the experiment lock so that two counts cannot both see the other absent.
        with _flock(workdir / _EXPERIMENT_LOCK, fcntl.LOCK_EX, None):
            stack.enter_context(_flock(
                workdir / LOCK_FILE, fcntl.LOCK_SH,
                f"an unsharded scu-experiment is running in {workdir}; wait for it"))
            stack.enter_context(_flock(
                workdir / f"{LOCK_FILE}.{shard.name}", fcntl.LOCK_EX,
                f"shard {shard} is already running in {workdir}; wait for it"))
            mine = workdir / f"{LOCK_FILE}.shards-{shard.count}"
            for other in workdir.glob(f"{LOCK_FILE}.shards-*"):
                if other != mine and _held(other):
                    raise FileExistsError(
                        f"shards of another count ({other.name.rsplit('-', 1)[1]}) are running in "
                        f"{workdir}; every shard of a sweep needs the same n (here {shard.count})")
            stack.enter_context(_flock(mine, fcntl.LOCK_SH, f"{mine.name} is held exclusively in {workdir}"))
        yield


def start_run_record(root: pathlib.Path, config: ml_collections.ConfigDict, workers: int,
                     shard: Shard | None = None) -> Callable[[float | None, int], None]:
    """Adds this run of the command to experiment.json (with the config and its fingerprint);
    returns `record(seconds, cells_run)`, which updates the run's entry.

    Shards of the sweep update the file at the same time: each update reads it, changes this
    run's entry alone and writes it back, under `.lock.experiment`; an experiment.json that
    another experiment wrote meanwhile is refused.
    """
    experiment_file = root / EXPERIMENT_FILE
    this_run = {"id": uuid.uuid4().hex,
                "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                "shard": None if shard is None else str(shard),
                "workers": workers, "machine": machine_info(), "cells_run": 0, "seconds": None}

    def record(seconds: float | None, cells_run: int) -> None:
        this_run.update(seconds=seconds, cells_run=cells_run)
        with _flock(root / _EXPERIMENT_LOCK, fcntl.LOCK_EX, None):
            if experiment_file.exists():
                _check_fingerprint(root, config)
                runs = json.loads(experiment_file.read_text()).get("runs", [])
            else:
                runs = []
            ids = [run.get("id") for run in runs]
            if this_run["id"] in ids:
                runs[ids.index(this_run["id"])] = this_run
            else:
                runs.append(this_run)
            write_json_atomic(experiment_file, {
                "fingerprint": result_fingerprint(config),
                "config": json.loads(config.to_json_best_effort()), "runs": runs})

    record(None, 0)
    return record

"""Experiments: a grid of cells run as one resumable command (`scu-experiment`).

A cell is one (dataset, channel, family, SNR, EDR, seed, method, β_u). Every cell of the same
(dataset, channel, family, SNR, EDR, seed) starts from the same original system, trained once. The
workdir holds
```
WORKDIR/experiment.json       the experiment config, and every run of it (machine, workers, time)
WORKDIR/results.jsonl         one JSON line per finished cell, appended by one process, fsync'ed
WORKDIR/results.csv           the same rows as a table (rewritten atomically after every cell)
WORKDIR/runs/<group>/train    the original system of a group (scu-train layout)
WORKDIR/runs/<group>/<cell>   a method's unlearned system (scu-unlearn layout), samples.npz
WORKDIR/figures, REPORT.md    written by `scu_jax.report` at the end (and by scu-report)
```
A rerun skips every cell whose row is in results.jsonl and resumes the others from their
checkpoints, so a killed sweep finishes with the rows an uninterrupted one would have written.
Tasks run in `workers` spawned processes (each JAX process keeps its compiled functions and a
persistent compilation cache); the parent alone writes results, and workers die with it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import csv
import dataclasses
import datetime
import fcntl
import io
import json
import math
import multiprocessing
import os
import pathlib
import platform
import shutil
import sys
import time
from typing import Any, Iterable, Sequence

import ml_collections
import numpy as np

from scu_jax import config as config_lib
from scu_jax import presets
from scu_jax.channels import CHANNELS, FAMILIES
from scu_jax.errors import CheckpointMismatchError
from scu_jax.runs.files import check_workdir, write_json_atomic
from scu_jax.errors import ConfigError
from scu_jax.data import DATASETS

EXPERIMENTS = ("edr_sweep", "snr_sweep", "beta_sweep")
ORIGINAL = "original"  # the cell that evaluates the trained system itself
BETA_METHODS = ("scu", "scu_no_cc", "vbu")  # the methods whose loss has β_u
ROWS_FILE = "results.jsonl"
CSV_FILE = "results.csv"
EXPERIMENT_FILE = "experiment.json"
SAMPLES_FILE = "samples.npz"
# Fields of a base config that do not change any result (so a rerun may change them).
_NOT_RESULTS = ("log_every_seconds", "checkpoint_every_epochs", "summary_every_steps")
KEY_FIELDS = ("dataset", "channel", "family", "snr_db", "edr", "seed", "method", "beta_u")


# --- The experiment configs ----------------------------------------------------------------------


def experiment_config(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """The paper's sweep `name` for the datasets and variant named in `arg`.

    `arg` is a comma-separated list of datasets (`mnist5k`, the default; `mnist`, `cifar10`,
    `cifar100`; `tfds` for all three tfds datasets) and optionally `reference` (every base system
    under the authors' protocol, `presets.use_reference_protocol`, each on its own channel and
    SNR) and `smoke` (a tiny grid on tiny systems, for tests).
    """
    if name not in EXPERIMENTS:
        raise ConfigError(f"unknown experiment {name!r}; choose one of: {', '.join(EXPERIMENTS)}")
    tokens = [token.strip() for token in (arg or "").split(",") if token.strip()]
    smoke, reference = "smoke" in tokens, "reference" in tokens
    datasets: list[str] = []
    for token in tokens:
        if token in ("smoke", "reference"):
            continue
        if token == "tfds":
            datasets += ["mnist", "cifar10", "cifar100"]
        elif token in DATASETS:
            datasets.append(token)
        else:
            raise ConfigError(f"unknown experiment config argument {token!r}; use datasets from: "
                              f"{', '.join(DATASETS)}, tfds, and optionally reference, smoke")
    datasets = list(dict.fromkeys(datasets or ["mnist5k"]))

    config = ml_collections.ConfigDict()
    config.name = name
    config.bases = ml_collections.ConfigDict()
    for dataset in datasets:
        base = presets.preset(dataset)
        if reference:
            base = presets.use_reference_protocol(base)
        # Sweeps evaluate hundreds of systems: MINE on D_e only (the paper's MI metric), with a
        # third of the steps (measured: 1,500 → 500 steps cuts MI time per system 7.3 → 1.2 s).
        base.evaluation.mi_steps = 500
        base.evaluation.mi_sets = ("erased",)
        if name == "snr_sweep" and dataset == "mnist5k":
            # 45 systems (3 channels × 5 SNRs × 3 seeds) plus their retraining must fit in an
            # hour on 2 cores: a third of the main job's step budget (100 + 50 epochs).
            base.train.epochs, base.train.receiver_epochs = 100, 50
        base = presets.apply_variant(base, "smoke" if smoke else None)
        if smoke:
            base.evaluation.mi_steps = 0  # MINE's compilation alone would double a smoke sweep
        config.bases[dataset] = base

    grid = ml_collections.ConfigDict()
    # The reference protocol keeps each base's own channel (MNIST: Rician 6 dB; CIFAR: AWGN 20 dB).
    grid.channels = () if reference else ("awgn",)  # () = each base's own
    grid.families = () if reference else ("paper",)
    grid.snr_db = ()
    grid.edr = ()
    grid.beta_u = ()
    grid.methods = (ORIGINAL, "retrain", "scu", "scu_no_cc", "vbu", "hbu", "finetune")
    grid.seeds = (0, 1, 2)
    if name == "edr_sweep":
        grid.edr = (0.02, 0.04, 0.06, 0.08, 0.10)
    elif name == "snr_sweep":
        grid.channels = ("awgn", "rayleigh", "rician")
        grid.families = grid.families or ("paper",)
        grid.snr_db = (5.0, 10.0, 15.0, 20.0, 25.0)
    else:
        grid.beta_u = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
        grid.methods = (ORIGINAL, "retrain", "scu", "scu_no_cc", "vbu")
    if smoke:
        grid.seeds = (0,)
        grid.methods = (ORIGINAL, "retrain", "scu", "vbu")
        if name == "edr_sweep":
            grid.edr = (0.04, 0.08)
        elif name == "snr_sweep":
            grid.channels, grid.snr_db = ("awgn", "rayleigh"), (5.0, 20.0)
            grid.families = grid.families or ("paper",)
        else:
            grid.beta_u = (0.01, 1.0)
    config.grid = grid
    return config


# --- The grid ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Group:
    """The cells that share one original system."""

    dataset: str
    channel: str
    family: str
    snr_db: float
    edr: float
    seed: int

    @property
    def id(self) -> str:
        return (f"{self.dataset}/{self.channel}-{self.family}_snr{self.snr_db:g}_edr{self.edr:g}"
                f"/seed_{self.seed}")


@dataclasses.dataclass(frozen=True)
class Cell:
    group: Group
    method: str
    beta_u: float | None  # None: the method has no β_u

    @property
    def name(self) -> str:
        return self.method if self.beta_u is None else f"{self.method}_bu{self.beta_u:g}"

    @property
    def id(self) -> str:
        return f"{self.group.id}/{self.name}"

    def fields(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self.group), "method": self.method, "beta_u": self.beta_u}


def _check(condition: bool, field: str, value: Any, allowed: str) -> None:
    if not condition:
        raise ConfigError(f"config.{field}={value!r}: {allowed}")


def _numbers(values: Sequence[Any], low: float, high: float, *, low_open: bool = False) -> bool:
    def ok(value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        return (value > low if low_open else value >= low) and value <= high

    return all(ok(value) for value in values)


def group_config(base: ml_collections.ConfigDict, group: Group) -> ml_collections.ConfigDict:
    config = base.copy_and_resolve_references()
    config.channel.name, config.channel.family = group.channel, group.family
    config.channel.snr_db, config.erasure.edr, config.seed = group.snr_db, group.edr, group.seed
    return config


def cell_config(base: ml_collections.ConfigDict, cell: Cell) -> ml_collections.ConfigDict:
    config = group_config(base, cell.group)
    if cell.method != ORIGINAL:
        config.unlearning.method = cell.method
    if cell.beta_u is not None:
        config.unlearning.beta_u = cell.beta_u
    return config


def validate_experiment(config: ml_collections.ConfigDict) -> list[Cell]:
    """Checks the experiment config and every cell's system config; returns the cells in order.

    Raises `ConfigError` (one line naming the field, its value and what is allowed).
    """
    from scu_jax.config import METHODS

    _check(config.name in EXPERIMENTS, "name", config.name, f"must be one of: {', '.join(EXPERIMENTS)}")
    _check(len(config.bases) > 0, "bases", dict(config.bases), "must name at least one dataset")
    grid = config.grid
    for field, choices, may_be_empty in (("channels", CHANNELS, True), ("families", FAMILIES, True),
                                         ("methods", (ORIGINAL,) + METHODS, False)):
        values = tuple(grid[field])
        _check((may_be_empty or len(values) > 0) and set(values) <= set(choices)
               and len(set(values)) == len(values), f"grid.{field}", values,
               f"must be distinct values from: {', '.join(choices)}"
               + (" (or empty: the base's)" if may_be_empty else ""))
    _check(_numbers(grid.snr_db, -50.0, 100.0), "grid.snr_db", tuple(grid.snr_db),
           "must be finite numbers in [-50, 100] dB (or empty: the base's)")
    _check(_numbers(grid.edr, 0.0, 0.5, low_open=True), "grid.edr", tuple(grid.edr),
           "must be numbers in (0, 0.5] (or empty: the base's)")
    _check(_numbers(grid.beta_u, 0.0, 1e6), "grid.beta_u", tuple(grid.beta_u),
           "must be numbers in [0, 1e6] (or empty: the base's)")
    seeds = tuple(grid.seeds)
    _check(len(seeds) > 0 and len(set(seeds)) == len(seeds)
           and all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**31 for s in seeds),
           "grid.seeds", seeds, "must be distinct integers in [0, 2**31)")
    for dataset, base in config.bases.items():
        _check(base.dataset == dataset, f"bases.{dataset}.dataset", base.dataset,
               f"must be {dataset!r}, the name it is listed under")
        try:
            config_lib.validate_config(base)
        except ConfigError as error:
            raise ConfigError(str(error).replace("config.", f"config.bases.{dataset}.", 1)) from None
    cells = expand(config)
    for cell in cells:
        try:
            config_lib.validate_config(cell_config(config.bases[cell.group.dataset], cell))
        except ConfigError as error:
            raise ConfigError(f"cell {cell.id}: {error}") from None
    return cells


def expand(config: ml_collections.ConfigDict) -> list[Cell]:
    """Every cell of the grid, grouped by original system (retrain first within a group)."""
    grid = config.grid
    methods = sorted(grid.methods, key=lambda m: (m != "retrain", m == ORIGINAL))
    cells = []
    for dataset, base in config.bases.items():
        for channel in tuple(grid.channels) or (base.channel.name,):
            for family in tuple(grid.families) or (base.channel.family,):
                for snr_db in tuple(grid.snr_db) or (base.channel.snr_db,):
                    for edr in tuple(grid.edr) or (base.erasure.edr,):
                        for seed in grid.seeds:
                            group = Group(dataset, channel, family, float(snr_db), float(edr),
                                          int(seed))
                            for method in methods:
                                if method in BETA_METHODS:
                                    for beta_u in tuple(grid.beta_u) or (base.unlearning.beta_u,):
                                        cells.append(Cell(group, method, float(beta_u)))
                                else:
                                    cells.append(Cell(group, method, None))
    return cells


# --- Rows: the append-only results file ----------------------------------------------------------


def read_rows(workdir: str | os.PathLike, *, repair: bool = False) -> list[dict[str, Any]]:
    """The finished cells' rows. A last line cut by a kill (no newline, or not JSON) is dropped,
    and with `repair` removed from the file; a repeated cell keeps its first row."""
    path = pathlib.Path(workdir) / ROWS_FILE
    if not path.exists():
        return []
    text = path.read_text()
    lines = text.split("\n")
    complete, tail = lines[:-1], lines[-1]
    rows, seen, damaged = [], set(), bool(tail)
    for line in complete:
        try:
            row = json.loads(line)
        except ValueError:
            damaged = True
            continue
        if row.get("cell") in seen:
            damaged = True
            continue
        seen.add(row.get("cell"))
        rows.append(row)
    if damaged and repair:
        _write_text_atomic(path, "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))
    return rows


def _append_row(workdir: pathlib.Path, row: dict[str, Any]) -> None:
    with open(workdir / ROWS_FILE, "a") as handle:
        handle.write(json.dumps(row, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _write_text_atomic(path: pathlib.Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_csv(workdir: str | os.PathLike, rows: Sequence[dict[str, Any]]) -> None:
    """All rows as CSV: the cell's key fields first, then every scalar result, sorted by name."""
    scalar = sorted({key for row in rows for key, value in row.items()
                     if key not in KEY_FIELDS and not isinstance(value, (dict, list))})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(KEY_FIELDS) + scalar, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: ("" if row.get(key) is None else row.get(key))
                         for key in list(KEY_FIELDS) + scalar})
    _write_text_atomic(pathlib.Path(workdir) / CSV_FILE, buffer.getvalue())


# --- Tasks (run in a worker process, or in this one) ---------------------------------------------


def _group_dir(workdir: pathlib.Path, group: Group) -> pathlib.Path:
    return workdir / "runs" / group.id


def run_task(task: dict[str, Any]) -> dict[str, Any]:
    """Runs one task: `train` (a group's original system) or `cell`; returns what it produced."""
    from scu_jax.errors import NonFiniteError
    from scu_jax.runs.files import RESULTS_FILE
    from scu_jax.runs.train import train_and_evaluate
    from scu_jax.runs.evaluate import evaluate_workdir
    from scu_jax.runs.unlearn import unlearn_and_evaluate

    started = time.perf_counter()
    config = config_lib.config_from_json(task["config"])
    train_dir = task["train_dir"]
    if task["kind"] == "train":
        train_and_evaluate(config, train_dir)
        return {"seconds": time.perf_counter() - started}
    out_dir = pathlib.Path(task["out_dir"])
    method = task["method"]
    try:
        if method == ORIGINAL:
            results = evaluate_workdir(train_dir, reference_workdir=task["reference_dir"],
                                       output=str(out_dir / RESULTS_FILE),
                                       samples_file=str(out_dir / SAMPLES_FILE))
            trained = json.loads((pathlib.Path(train_dir) / RESULTS_FILE).read_text())
            results.update({key: trained[key] for key in
                            ("train_seconds", "compile_seconds", "epochs", "steps")})
        else:
            results = unlearn_and_evaluate(config, train_dir, str(out_dir),
                                           reference_workdir=task["reference_dir"],
                                           samples_file=str(out_dir / SAMPLES_FILE))
        results = {key: value for key, value in results.items() if key != "history"}
        results["status"] = "ok"
    except NonFiniteError as error:
        # A diverging baseline is a result of the sweep, not a reason to stop it.
        results = {"status": "non-finite", "error": str(error)}
    results["task_seconds"] = time.perf_counter() - started
    return results


def _worker_init(cache_dir: str) -> None:
    """Runs in each spawned worker: die with the parent, keep logs quiet, share compilations."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGKILL)
        if os.getppid() == 1:  # the parent died before prctl took effect
            os._exit(1)
    _quiet_and_cached(cache_dir)


def _quiet_and_cached(cache_dir: str) -> None:
    import jax
    from absl import logging

    from scu_jax.binaries.common import quiet_library_logs

    quiet_library_logs()
    logging.set_verbosity(logging.WARNING)
    if cache_dir:
        jax.config.update("jax_compilation_cache_dir", cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


# --- The runner ----------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    import jax

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


def _result_fingerprint(config: ml_collections.ConfigDict) -> dict[str, Any]:
    bases = {}
    for dataset, base in config.bases.items():
        plain = json.loads(base.to_json_best_effort())
        for field in _NOT_RESULTS:
            plain.pop(field, None)
        bases[dataset] = plain
    return {"name": config.name, "bases": bases}


def _first_difference(saved: Any, wanted: Any, prefix: str) -> str:
    if isinstance(saved, dict) and isinstance(wanted, dict):
        for key in sorted(set(saved) | set(wanted)):
            found = _first_difference(saved.get(key), wanted.get(key), f"{prefix}.{key}")
            if found:
                return found
        return ""
    return "" if saved == wanted else f"{prefix} is {saved!r} there but {wanted!r} now"


@contextlib.contextmanager
def _exclusive(workdir: pathlib.Path):
    handle = open(workdir / ".lock", "w")
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


class _Progress:
    """Cells done, the tasks under way and the ETA: one rewritten line on a terminal, else a line
    per event (at most every `every` seconds)."""

    def __init__(self, total_cells: int, workers: int, stream=None, every: float = 10.0):
        self.total, self.done, self.workers = total_cells, 0, max(workers, 1)
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
        now = time.monotonic()
        if not (self.tty or force or now - self.last >= self.every):
            return
        self.last = now
        fraction = self.done / self.total if self.total else 1.0
        bar = "#" * int(24 * fraction) + "." * (24 - int(24 * fraction))
        eta = self.eta(remaining)
        line = (f"[{bar}] {self.done}/{self.total} cells ({100 * fraction:.0f} %) | elapsed "
                f"{_clock(now - self.started)} | ETA {_clock(eta) if eta is not None else '?'} | "
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


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m{rest % 60:02d}s" if hours else f"{rest // 60}m{rest % 60:02d}s"


@dataclasses.dataclass
class ExperimentReport:
    cells: int  # in the grid
    ran: int  # cells run by this call
    skipped: int  # finished before this call
    seconds: float
    rows: list[dict[str, Any]]


def run_experiment(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
                   workers: int = 1, overwrite: bool = False, compilation_cache: str | None = None,
                   progress_stream=None) -> ExperimentReport:
    """Runs (or resumes) every unfinished cell of the experiment; returns what it did.

    Args:
      config: an experiment config (`experiment_config`), validated here before any work.
      workdir: the experiment directory. One that holds rows of an experiment with other base
        configs is refused unless `overwrite` (which deletes its results and runs first).
      workers: tasks run in this many spawned processes; 0 runs them in this process.
      overwrite: start afresh in a workdir that holds another experiment.
      compilation_cache: JAX's persistent compilation cache directory (default
        `WORKDIR/cache/jax`; "" for none).
      progress_stream: where the progress line goes (stderr by default).
    """
    cells = validate_experiment(config)
    if workers < 0:
        raise ValueError(f"--workers={workers}: must be >= 0 (0 runs every task in this process)")
    check_workdir(workdir)
    root = pathlib.Path(workdir)
    experiment_file = root / EXPERIMENT_FILE
    fingerprint = _result_fingerprint(config)
    if experiment_file.exists() and not overwrite:
        try:
            saved = json.loads(experiment_file.read_text())
        except ValueError:
            raise CheckpointMismatchError(f"{experiment_file} is unreadable; use another --workdir "
                                          "or --overwrite") from None
        difference = _first_difference(saved.get("fingerprint"), fingerprint, "config")
        if difference:
            raise CheckpointMismatchError(
                f"{root} holds another experiment ({difference}); use another --workdir or "
                "--overwrite to replace it")
    elif not experiment_file.exists() and root.exists() and any(root.iterdir()) and not overwrite:
        raise FileExistsError(f"--workdir={root} exists and is not an experiment directory; use "
                              "another --workdir")
    root.mkdir(parents=True, exist_ok=True)
    with _exclusive(root):
        if overwrite:
            for name in (ROWS_FILE, CSV_FILE, EXPERIMENT_FILE, "REPORT.md"):
                (root / name).unlink(missing_ok=True)
            for name in ("runs", "figures"):
                shutil.rmtree(root / name, ignore_errors=True)
        return _run_locked(config, root, cells, fingerprint, workers, compilation_cache,
                           progress_stream)


def _run_locked(config, root: pathlib.Path, cells: list[Cell], fingerprint, workers: int,
                compilation_cache: str | None, progress_stream) -> ExperimentReport:
    started_wall = time.perf_counter()
    experiment_file = root / EXPERIMENT_FILE
    previous = json.loads(experiment_file.read_text()) if experiment_file.exists() else {}
    runs = previous.get("runs", [])
    this_run = {"started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                "workers": workers, "machine": machine_info(), "cells_run": 0, "seconds": None}
    runs.append(this_run)

    def record(seconds: float | None, cells_run: int) -> None:
        this_run.update(seconds=seconds, cells_run=cells_run)
        write_json_atomic(experiment_file, {"fingerprint": fingerprint,
                                            "config": json.loads(config.to_json_best_effort()),
                                            "runs": runs})

    record(None, 0)
    rows = read_rows(root, repair=True)
    done = {row["cell"] for row in rows}
    todo = [cell for cell in cells if cell.id not in done]
    cache = str(root / "cache" / "jax") if compilation_cache is None else compilation_cache

    # Tasks: a group's training, then its cells (retrain before the others, which measure their
    # distance to it).
    groups: dict[Group, list[Cell]] = {}
    for cell in todo:
        groups.setdefault(cell.group, []).append(cell)
    tasks: dict[str, dict[str, Any]] = {}
    dependencies: dict[str, set[str]] = {}
    for group, group_cells in groups.items():
        base = config.bases[group.dataset]
        group_dir = _group_dir(root, group)
        train_dir = str(group_dir / "train")
        has_retrain = "retrain" in config.grid.methods
        reference = str(group_dir / "retrain") if has_retrain else None
        train_id = f"train {group.id}"
        tasks[train_id] = {"kind": "train", "config": json.loads(group_config(base, group).to_json()),
                           "train_dir": train_dir, "label": f"{group.id} train"}
        dependencies[train_id] = set()
        for cell in group_cells:
            tasks[cell.id] = {"kind": "cell", "cell": cell, "method": cell.method,
                              "config": json.loads(cell_config(base, cell).to_json()),
                              "train_dir": train_dir, "out_dir": str(group_dir / cell.name),
                              "reference_dir": None if cell.method == "retrain" else reference,
                              "label": cell.id}
            needs = {train_id}
            if has_retrain and cell.method != "retrain":
                needs.add(f"{group.id}/retrain")
            dependencies[cell.id] = needs
    # A group whose retrain is already finished needs no retrain task.
    for needs in dependencies.values():
        needs.intersection_update(tasks)

    progress = _Progress(len(cells), workers, progress_stream)
    progress.done = len(cells) - len(todo)
    ran = 0
    kinds = {task_id: (task["method"] if task["kind"] == "cell" and task["method"] in
                       (ORIGINAL, "retrain", "finetune") else task["kind"])
             for task_id, task in tasks.items()}
    pending = dict(tasks)
    progress.show([], [kinds[t] for t in pending], force=True)

    def complete(task_id: str, output: dict[str, Any]) -> None:
        nonlocal ran
        task = tasks[task_id]
        if task["kind"] == "cell":
            cell: Cell = task["cell"]
            row = {"cell": cell.id, "group": cell.group.id, "experiment": config.name,
                   **cell.fields(), **output,
                   "finished_at": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
            _append_row(root, row)
            rows.append(row)
            write_csv(root, rows)
            ran += 1
            progress.finished(kinds[task_id], output["task_seconds"], 1)
        else:
            progress.finished(kinds[task_id], output["seconds"], 0)
        for needs in dependencies.values():
            needs.discard(task_id)

    def ready() -> list[str]:
        return [task_id for task_id in pending if not dependencies[task_id]]

    try:
        if workers == 0:
            _quiet_and_cached(cache)
            while pending:
                task_id = ready()[0]
                task = pending.pop(task_id)
                progress.show([task["label"]], [kinds[t] for t in pending])
                complete(task_id, run_task(_payload(task)))
                progress.show([], [kinds[t] for t in pending], force=True)
        else:
            context = multiprocessing.get_context("spawn")
            pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=workers, mp_context=context, initializer=_worker_init, initargs=(cache,))
            running: dict[concurrent.futures.Future, str] = {}
            try:
                finished: set = set()
                while pending or running:
                    for task_id in ready():
                        if len(running) >= workers:
                            break
                        running[pool.submit(run_task, _payload(pending.pop(task_id)))] = task_id
                    progress.show([tasks[t]["label"] for t in running.values()],
                                  [kinds[t] for t in list(pending) + list(running.values())],
                                  force=bool(finished))
                    finished, _ = concurrent.futures.wait(
                        running, timeout=progress.every,
                        return_when=concurrent.futures.FIRST_COMPLETED)
                    for future in finished:
                        task_id = running.pop(future)
                        complete(task_id, future.result())
                progress.show([], [], force=True)
            except BaseException:
                # A failed task or Ctrl-C: stop the other workers now rather than wait for their
                # tasks (what they had saved is resumed by the next run).
                for process in list(getattr(pool, "_processes", {}).values()):
                    process.kill()
                pool.shutdown(wait=False, cancel_futures=True)
                raise
            pool.shutdown()
    finally:
        progress.close()
        record(time.perf_counter() - started_wall, ran)
    return ExperimentReport(cells=len(cells), ran=ran, skipped=len(cells) - len(todo),
                            seconds=time.perf_counter() - started_wall, rows=rows)


def _payload(task: dict[str, Any]) -> dict[str, Any]:
    """What a worker needs (plain JSON-able values only)."""
    return {key: value for key, value in task.items() if key not in ("cell", "label")}

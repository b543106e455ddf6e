"""`run_experiment`: runs (or resumes) every unfinished cell of an experiment.

Tasks run in `workers` spawned processes (each JAX process keeps its compiled functions and a
persistent compilation cache); the parent alone writes results, and workers die with it. A rerun
skips every cell whose row is in a rows file and resumes the others from their checkpoints, so
a killed sweep finishes with the rows an uninterrupted one would have written.

With a `shard` (i of n), the call runs only the shard's cells (`shards.partition`: whole groups,
so each group's training and retraining have one owner) and appends to its own rows file, beside
the other shards running at the same time on other machines; results.csv, figures and REPORT.md
are left to `scu-report`, which merges every shard's rows once they have finished.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import multiprocessing
import os
import pathlib
import time
from typing import Any

import ml_collections

from scu_jax.errors import Interrupted
from scu_jax.experiments.grid import Cell, validate_experiment
from scu_jax.experiments.progress import Progress
from scu_jax.experiments.rows import append_row, make_row, read_rows, write_csv
from scu_jax.experiments.shards import Shard, shard_cells
from scu_jax.experiments.tasks import TaskGraph
from scu_jax.experiments.workdir import (check_experiment_dir, exclusive, exclusive_shard,
                                         remove_results, start_run_record)
from scu_jax.experiments.worker import quiet_and_cached, run_task, worker_init

# How long an interrupted sweep waits for its workers to reach an epoch boundary and save.
WORKER_GRACE_SECONDS = 120


@dataclasses.dataclass
class ExperimentReport:
    cells: int  # in the grid, or in the shard
    ran: int  # cells run by this call
    skipped: int  # finished before this call
    seconds: float
    rows: list[dict[str, Any]]  # every file's, this call's included
    shard: Shard | None = None


def run_experiment(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
                   workers: int = 1, overwrite: bool = False, compilation_cache: str | None = None,
                   progress_stream=None, shard: Shard | None = None) -> ExperimentReport:
    """Runs (or resumes) every unfinished cell of the experiment; returns what it did.

    Args:
      config: an experiment config (`experiment_config`), validated here before any work.
      workdir: the experiment directory. One that holds rows of an experiment with other base
        configs is refused unless `overwrite` (which deletes its results and runs first).
      workers: tasks run in this many spawned processes; 0 runs them in this process.
      overwrite: start afresh in a workdir that holds another experiment (refused with a
        `shard`: it would delete the other shards' results).
      compilation_cache: JAX's persistent compilation cache directory (default
        `WORKDIR/cache/jax`, a shard's `WORKDIR/cache/jax-shard-i-of-n`: JAX writes its entries
        in place, so processes on several machines must not share one; "" for none).
      progress_stream: where the progress line goes (stderr by default).
      shard: run only this shard's cells (None: every cell); cells with a row in any rows file
        are skipped.
    """
    cells = validate_experiment(config)
    if workers < 0:
        raise ValueError(f"--workers={workers}: must be >= 0 (0 runs every task in this process)")
    if shard is not None and overwrite:
        raise ValueError(f"--overwrite with shard {shard}: it would delete the other shards' "
                         "results; delete the workdir's contents first or use another --workdir")
    root = check_experiment_dir(workdir, config, overwrite)
    root.mkdir(parents=True, exist_ok=True)
    cache = (str(root / "cache" / ("jax" if shard is None else f"jax-{shard.name}"))
             if compilation_cache is None else compilation_cache)
    with exclusive(root) if shard is None else exclusive_shard(root, shard):
        if overwrite:
            remove_results(root)
        return _run_locked(config, root, cells, shard, workers, cache, progress_stream)


class _Results:
    """Where finished tasks go: a cell's row to the rows file (and, unsharded, results.csv),
    every task's time to the progress line, and the tasks that waited for it to the ready ones."""

    def __init__(self, experiment: str, root: pathlib.Path, rows: list[dict[str, Any]],
                 graph: TaskGraph, progress: Progress, shard: Shard | None):
        self.experiment, self.root, self.rows = experiment, root, rows
        self.graph, self.progress, self.shard = graph, progress, shard
        self.ran = 0

    def complete(self, task_id: str, output: dict[str, Any]) -> None:
        task = self.graph.tasks[task_id]
        if task["kind"] == "cell":
            self._add_rows([task["cell"]], [output])
            self.progress.finished(self.graph.kind(task_id), output["task_seconds"], 1)
        elif task["kind"] == "together" and task["of"] == "cell":
            self._add_rows(task["cells"], output["outputs"])
            self.progress.finished(self.graph.kind(task_id), output["task_seconds"],
                                   len(task["cells"]))
        else:
            self.progress.finished(self.graph.kind(task_id), output["seconds"], 0)
        self.graph.finish(task_id)

    def _add_rows(self, cells: list[Cell], outputs: list[dict[str, Any]]) -> None:
        for cell, output in zip(cells, outputs):
            row = make_row(self.experiment, cell, output)
            append_row(self.root, row, self.shard)
            self.rows.append(row)
            self.ran += 1
        if self.shard is None:  # shards running beside each other would race for it
            write_csv(self.root, self.rows)


def _run_locked(config: ml_collections.ConfigDict, root: pathlib.Path, cells: list[Cell],
                shard: Shard | None, workers: int, cache: str,
                progress_stream) -> ExperimentReport:
    started = time.perf_counter()
    rows = read_rows(root, repair=True, shard=shard, order=[cell.id for cell in cells])
    record = start_run_record(root, config, workers, shard)
    done = {row["cell"] for row in rows}
    cells = shard_cells(cells, shard)
    todo = [cell for cell in cells if cell.id not in done]
    graph = TaskGraph.plan(config, root, todo)
    progress = Progress(len(cells), workers, progress_stream, done=len(cells) - len(todo))
    results = _Results(config.name, root, rows, graph, progress, shard)
    progress.show([], graph.kinds(list(graph.pending)), force=True)
    try:
        if workers == 0:
            _run_here(graph, results, progress, cache)
        else:
            _run_in_workers(graph, results, progress, workers, cache)
    finally:
        progress.close()
        record(time.perf_counter() - started, results.ran)
    return ExperimentReport(cells=len(cells), ran=results.ran, skipped=len(cells) - len(todo),
                            seconds=time.perf_counter() - started, rows=rows, shard=shard)


def _run_here(graph: TaskGraph, results: _Results, progress: Progress, cache: str) -> None:
    """Every task in this process, one at a time, in order."""
    quiet_and_cached(cache)
    while graph.pending:
        task_id = graph.ready()[0]
        task = graph.take(task_id)
        progress.show(graph.labels([task_id]), graph.kinds(list(graph.pending)))
        results.complete(task_id, run_task(task))
        progress.show([], graph.kinds(list(graph.pending)), force=True)


def _run_in_workers(graph: TaskGraph, results: _Results, progress: Progress, workers: int,
                    cache: str) -> None:
    """Every task in `workers` spawned processes, as many at once as are ready."""
    pool = concurrent.futures.ProcessPoolExecutor(
        max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
        initializer=worker_init, initargs=(cache,))
    try:
        _dispatch(pool, graph, results, progress, workers)
    except Interrupted as error:
        # SIGTERM or SIGINT: the workers' running tasks stop at their next epoch boundary,
        # saving what they checkpoint (`runs/signals.py`); the rest is not started.
        processes = list(getattr(pool, "_processes", {}).values())
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, error.signal)
        pool.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + WORKER_GRACE_SECONDS
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
        stragglers = [process for process in processes if process.is_alive()]
        for process in stragglers:
            process.kill()
        raise Interrupted(error.signal, (
            f"{error}: {results.ran} cells finished in this run; the running tasks stopped at an "
            "epoch boundary and saved what they checkpoint"
            + (f" ({len(stragglers)} still running after {WORKER_GRACE_SECONDS} s were killed)"
               if stragglers else "") + "; the same command resumes")) from None
    except BaseException:
        # A failed task: stop the other workers now rather than wait for their tasks (what they
        # had saved is resumed by the next run).
        for process in list(getattr(pool, "_processes", {}).values()):
            process.kill()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()


def _dispatch(pool: concurrent.futures.Executor, graph: TaskGraph, results: _Results,
              progress: Progress, workers: int) -> None:
    """Keeps `workers` ready tasks submitted until every task has finished."""
    running: dict[concurrent.futures.Future, str] = {}
    finished: set = set()
    while graph.pending or running:
        for task_id in graph.ready():
            if len(running) >= workers:
                break
            running[pool.submit(run_task, graph.take(task_id))] = task_id
        progress.show(graph.labels(list(running.values())),
                      graph.kinds(list(graph.pending) + list(running.values())),
                      force=bool(finished))
        finished, _ = concurrent.futures.wait(running, timeout=progress.every,
                                              return_when=concurrent.futures.FIRST_COMPLETED)
        for future in finished:
            results.complete(running.pop(future), future.result())
    progress.show([], [], force=True)

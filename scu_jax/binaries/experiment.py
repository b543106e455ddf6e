"""`scu-experiment`: a grid of cells (the paper's sweeps) as one resumable command.

Usage:
  scu-experiment --config=configs/experiments/SWEEP.py[:DATASETS[,smoke]] --workdir=DIR
      [--workers=N] [--shard=i/n] [--overwrite] [--report=false]

Writes DIR/results.jsonl (one row per cell), results.csv, figures/ and REPORT.md. Rerunning
the same command skips finished cells and resumes the rest; a workdir of another experiment is
refused unless --overwrite is given.

Across machines: --shard=i/n (or, without it, a SLURM array task's SLURM_ARRAY_TASK_ID minus
SLURM_ARRAY_TASK_MIN and SLURM_ARRAY_TASK_COUNT) runs shard i of n into a shared workdir, its
rows to DIR/results.shard-i-of-n.jsonl; scu-report merges them when every shard is done.

Example (8 cells, about a minute):
  scu-experiment --config=configs/experiments/edr_sweep.py:smoke --workdir=runs/smoke/sweep
"""

from __future__ import annotations

import os

from absl import flags, logging
from ml_collections import config_flags

from scu_jax.binaries import common
from scu_jax.experiments.report import write_report
from scu_jax.experiments.scheduler import run_experiment
from scu_jax.experiments.shards import parse_shard, shard_from_environment

PROGRAM = "scu-experiment"
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config: configs/experiments/SWEEP.py[:DATASETS[,reference][,smoke]]; "
    "its grid and bases overridden with --config.grid.AXIS=(...) and "
    "--config.bases.DATASET.FIELD=VALUE (docs/experiments.md).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The experiment directory.")
_WORKERS = flags.DEFINE_integer(
    "workers", None,
    "Tasks run in this many worker processes at once (0: all in this process; default: 2, or 1 "
    "on a one-CPU machine).")
_OVERWRITE = flags.DEFINE_boolean(
    "overwrite", False, "Delete the results of another experiment found in --workdir and start afresh.")
_REPORT = flags.DEFINE_boolean("report", True, "Write figures/ and REPORT.md at the end.")
_CACHE = flags.DEFINE_string(
    "compilation_cache", None, "JAX persistent compilation cache (default WORKDIR/cache/jax; '' = none).")
_SHARD = flags.DEFINE_string(
    "shard", None, "Run shard i/n of the grid (0 <= i < n; whole groups of cells each) into a "
    "shared --workdir; default: a SLURM array task's, from SLURM_ARRAY_TASK_ID (- "
    "SLURM_ARRAY_TASK_MIN) and SLURM_ARRAY_TASK_COUNT. Refuses --overwrite; writes no report "
    "(run scu-report once every shard is done).")
flags.mark_flags_as_required(["config", "workdir"])


def _shard():
    """--shard, else the SLURM array task's shard, else None (the whole grid)."""
    try:
        if _SHARD.value is not None:
            return parse_shard(_SHARD.value)
        return shard_from_environment(os.environ)
    except ValueError as error:
        common.fail(PROGRAM, error)


def _main() -> None:
    shard = _shard()
    config = common.config_or_fail(PROGRAM, _CONFIG)
    workers = min(2, os.cpu_count() or 1) if _WORKERS.value is None else _WORKERS.value
    if workers < 0:
        common.fail(PROGRAM, f"--workers={workers}: must be >= 0 (0 runs every task in "
                             "this process)")

    def body() -> None:
        done = run_experiment(config, _WORKDIR.value, workers=workers,
                              overwrite=_OVERWRITE.value, compilation_cache=_CACHE.value,
                              shard=shard)
        prefix = "" if shard is None else f"shard {shard}: "
        logging.info("%s%d cells: %d run now, %d finished before; %.1f s", prefix, done.cells,
                     done.ran, done.skipped, done.seconds)
        print(f"{prefix}{done.ran} cells run, {done.skipped} already finished, of {done.cells}; "
              f"{done.seconds:.1f} s")
        if shard is not None:
            # The other shards may still be running: the report is scu-report's, at the end.
            print(f"when every shard is done: scu-report --workdir={_WORKDIR.value}")
        elif _REPORT.value:
            print(f"report: {write_report(_WORKDIR.value)}")

    common.run_guarded(PROGRAM, body)


run = common.entry(PROGRAM, _main, __doc__)


if __name__ == "__main__":
    run()

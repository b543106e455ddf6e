"""`scu-experiment`: a grid of cells (the paper's sweeps) as one resumable command.

  scu-experiment --config=configs/experiments/edr_sweep.py --workdir=runs/edr --workers=2

Writes WORKDIR/results.jsonl (one row per cell), results.csv, figures/ and REPORT.md. Rerunning
the same command skips finished cells and resumes the rest; a workdir of another experiment is
refused unless --overwrite is given.
"""

from __future__ import annotations

import os

from absl import flags, logging
from ml_collections import config_flags

from scu_jax.binaries import common
from scu_jax.experiments.report import write_report
from scu_jax.experiments.scheduler import run_experiment

PROGRAM = "scu-experiment"
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config (configs/experiments/*.py[:datasets[,smoke]]).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The experiment directory.")
_WORKERS = flags.DEFINE_integer(
    "workers", min(2, os.cpu_count() or 1),
    "Tasks run in this many worker processes at once (0: all in this process).")
_OVERWRITE = flags.DEFINE_boolean(
    "overwrite", False, "Delete the results of another experiment found in --workdir and start afresh.")
_REPORT = flags.DEFINE_boolean("report", True, "Write figures/ and REPORT.md at the end.")
_CACHE = flags.DEFINE_string(
    "compilation_cache", None, "JAX persistent compilation cache (default WORKDIR/cache/jax; '' = none).")
flags.mark_flags_as_required(["config", "workdir"])


def _main() -> None:
    config = common.config_or_fail(PROGRAM, _CONFIG)
    if _WORKERS.value < 0:
        common.fail(PROGRAM, f"--workers={_WORKERS.value}: must be >= 0 (0 runs every task in "
                             "this process)")

    def body() -> None:
        done = run_experiment(config, _WORKDIR.value, workers=_WORKERS.value,
                              overwrite=_OVERWRITE.value, compilation_cache=_CACHE.value)
        logging.info("%d cells in the grid: %d run now, %d finished before; %.1f s", done.cells,
                     done.ran, done.skipped, done.seconds)
        print(f"{done.ran} cells run, {done.skipped} already finished, of {done.cells}; "
              f"{done.seconds:.1f} s")
        if _REPORT.value:
            print(f"report: {write_report(_WORKDIR.value)}")

    common.run_guarded(PROGRAM, body)


run = common.entry(PROGRAM, _main)


if __name__ == "__main__":
    run()

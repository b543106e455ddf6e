"""Experiments: many runs, one command each.

`scu-experiment` runs a grid of cells (the paper's sweeps) resumably and `scu-report` turns its
rows into figures and REPORT.md; `scu-pipeline` runs the main job (train → every method → a
comparison table over seeds). Modules, one job each:

  sweeps     the paper's sweeps as experiment configs
  grid       cells and groups, their configs, validation and expansion
  workdir    the experiment directory: layout, fingerprint, lock, run records
  machine    what a timing was measured on
  rows       the append-only results.jsonl and results.csv
  shards     which cells shard i of n runs (whole groups), --shard and SLURM array tasks
  tasks      a sweep's tasks and their dependencies
  worker     one task, in a worker process or in this one
  progress   the progress line and ETA
  scheduler  run_experiment: tasks over worker processes, rows as they finish
  aggregate  statistics over seeds and their Markdown (the report's and the main job's)
  figures    matplotlib figures of a sweep
  paper      the published numbers (paper_numbers.toml) and why ours differ
  relearning the relearning attack over an experiment's systems (relearning.json), its summary
  report     REPORT.md
  pipeline   the main job
"""

from scu_jax.experiments.aggregate import aggregate
from scu_jax.experiments.aggregate import with_speedups
from scu_jax.experiments.grid import Cell
from scu_jax.experiments.grid import Group
from scu_jax.experiments.grid import expand
from scu_jax.experiments.grid import validate_experiment
from scu_jax.experiments.machine import machine_info
from scu_jax.experiments.paper import paper_numbers
from scu_jax.experiments.pipeline import run_pipeline
from scu_jax.experiments.relearning import attack_experiment
from scu_jax.experiments.report import write_report
from scu_jax.experiments.rows import read_rows
from scu_jax.experiments.scheduler import ExperimentReport
from scu_jax.experiments.scheduler import run_experiment
from scu_jax.experiments.shards import Shard
from scu_jax.experiments.shards import partition
from scu_jax.experiments.sweeps import experiment_config

__all__ = (
    "Cell",
    "ExperimentReport",
    "Group",
    "Shard",
    "aggregate",
    "attack_experiment",
    "experiment_config",
    "expand",
    "machine_info",
    "paper_numbers",
    "partition",
    "read_rows",
    "run_experiment",
    "run_pipeline",
    "validate_experiment",
    "with_speedups",
    "write_report",
)

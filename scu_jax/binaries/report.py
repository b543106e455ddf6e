"""`scu-report`: the figures and REPORT.md of an experiment directory, from its results.

Usage:
  scu-report --workdir=DIR

Reads DIR/results.jsonl (and every shard's rows file) and the saved samples; writes
DIR/results.csv, DIR/figures/*.{png,pdf} and DIR/REPORT.md (each through a temporary file and a
rename). Needs no JAX computation.

Example (after the scu-experiment example):
  scu-report --workdir=runs/smoke/sweep
"""

from __future__ import annotations

from absl import flags

from scu_jax.binaries import common
from scu_jax.experiments.report import write_report

PROGRAM = "scu-report"
_WORKDIR = flags.DEFINE_string("workdir", None, "An scu-experiment directory.")
flags.mark_flags_as_required(["workdir"])


def _main() -> None:
    def body() -> None:
        print(f"report: {write_report(_WORKDIR.value)}")

    common.run_guarded(PROGRAM, body)


run = common.entry(PROGRAM, _main, __doc__)


if __name__ == "__main__":
    run()

"""`scu-report`: the figures and REPORT.md of an experiment directory, from its results.

  scu-report --workdir=runs/edr

Reads WORKDIR/results.jsonl and the saved samples; writes WORKDIR/figures/*.{png,pdf} and
WORKDIR/REPORT.md (each through a temporary file and a rename). Needs no JAX computation.
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


run = common.entry(PROGRAM, _main)


if __name__ == "__main__":
    run()

"""`scu-unlearn`: unlearns the erased set from a trained system with one method.

Usage:
  scu-unlearn --config=FILE[:VARIANTS] --init_workdir=TRAINED --workdir=DIR
      [--config.unlearning.method=scu|scu_no_cc|vbu|hbu|finetune|retrain|ssd|l1_sparse|salun]
      [--reference_workdir=RETRAINED] [--overwrite]

Reads the trained system from --init_workdir (never written to), runs the method, saves the
unlearned system with Orbax in --workdir and writes --workdir/results.json (every metric, the
unlearning time with compilation apart, the steps and the stopping rule's history).

Example (after the scu-train example):
  scu-unlearn --config=configs/mnist.py:smoke --init_workdir=runs/smoke/train --workdir=runs/smoke/scu
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from scu_jax.binaries import common
from scu_jax.runs.unlearn import unlearn_and_evaluate

PROGRAM = "scu-unlearn"
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file: configs/NAME.py[:reference,smoke]; any field overridden with "
    "--config.FIELD=VALUE (the fields: docs/config.md).", lock_config=True)
_INIT_WORKDIR = flags.DEFINE_string("init_workdir", None, "A finished scu-train workdir (read only).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory for the unlearned system.")
_REFERENCE = flags.DEFINE_string("reference_workdir", None,
                                 "Optional: the workdir of a `retrain` result, to report the "
                                 "distance to exact unlearning.")
_OVERWRITE = common.define_overwrite_flag()
_DISTRIBUTED = common.define_distributed_flags()
flags.mark_flags_as_required(["config", "init_workdir", "workdir"])


def _main() -> None:
    config = common.config_or_fail(PROGRAM, _CONFIG)
    common.initialize_distributed(PROGRAM, _DISTRIBUTED, config)

    def body() -> None:
        unlearn_and_evaluate(config, _INIT_WORKDIR.value, _WORKDIR.value,
                             reference_workdir=_REFERENCE.value, overwrite=_OVERWRITE.value)

    common.run_guarded(PROGRAM, body)


run = common.entry(PROGRAM, _main, __doc__)


if __name__ == "__main__":
    run()

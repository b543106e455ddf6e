"""`scu-train`: trains the original semantic communication system.

  scu-train --config=configs/mnist.py --workdir=runs/mnist [--config.channel.snr_db=10]

Rerunning the same command resumes from the workdir's latest checkpoint.
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from scu_jax.binaries import common
from scu_jax.runs.train import train_and_evaluate

PROGRAM = "scu-train"
_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:variant]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints and results.json.")
_OVERWRITE = common.define_overwrite_flag()
_DISTRIBUTED = common.define_distributed_flags()
flags.mark_flags_as_required(["config", "workdir"])


def _main() -> None:
    config = common.config_or_fail(PROGRAM, _CONFIG)
    common.initialize_distributed(PROGRAM, _DISTRIBUTED, config)

    def body() -> None:
        train_and_evaluate(config, _WORKDIR.value, overwrite=_OVERWRITE.value)

    common.run_guarded(PROGRAM, body)


run = common.entry(PROGRAM, _main)


if __name__ == "__main__":
    run()

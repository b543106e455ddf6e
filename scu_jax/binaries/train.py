"""`scu-train`: trains the original semantic communication system and evaluates it.

Usage:
  scu-train --config=FILE[:VARIANTS] --workdir=DIR [--config.FIELD=VALUE ...] [--overwrite]

Trains the receiver, then the codec (encoder, channel, decoder) on the poisoned training set of
the config's protocol, saves Orbax checkpoints in DIR/checkpoints/, the curves in DIR/summaries/
(TensorBoard) and every metric in DIR/results.json. Rerunning the same command resumes from the
workdir's latest checkpoint; a workdir of another configuration is refused unless --overwrite.

With --config.shards.count=S (and shards.slices=R) it trains S shard systems on disjoint shards
of the training set, R stages each, as one program, for exact deletion with scu-forget
(DIR/sharded.json, DIR/slices/; docs/exact-unlearning.md).

Example (a tiny run, under a minute on a CPU):
  scu-train --config=configs/mnist.py:smoke --workdir=runs/smoke/train
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from scu_jax.binaries import common
from scu_jax.runs.sharded import train_sharded
from scu_jax.runs.train import train_and_evaluate

PROGRAM = "scu-train"
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file: configs/NAME.py[:reference,smoke]; any field overridden with "
    "--config.FIELD=VALUE (the fields: docs/config.md).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints and results.json.")
_OVERWRITE = common.define_overwrite_flag()
_DISTRIBUTED = common.define_distributed_flags()
flags.mark_flags_as_required(["config", "workdir"])


def _main() -> None:
    config = common.config_or_fail(PROGRAM, _CONFIG)
    common.initialize_distributed(PROGRAM, _DISTRIBUTED, config)

    def body() -> None:
        if config.shards.count > 1:  # S shard systems, R stages each (docs/exact-unlearning.md)
            train_sharded(config, _WORKDIR.value, overwrite=_OVERWRITE.value)
            return
        train_and_evaluate(config, _WORKDIR.value, overwrite=_OVERWRITE.value)

    common.run_guarded(PROGRAM, body)


run = common.entry(PROGRAM, _main, __doc__)


if __name__ == "__main__":
    run()

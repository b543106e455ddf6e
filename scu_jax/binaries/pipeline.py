"""`scu-pipeline`: the main job — train, unlearn with every method, evaluate, compare.

Usage:
  scu-pipeline --config=FILE[:VARIANTS] --workdir=DIR [--seeds=0,1,2] [--methods=A,B,...]

Trains one system per seed (the seeds that start from scratch as one vmapped program), runs
every method on it (each method's seeds as one program), evaluates every system with the same
receiver, prints one comparison table (mean ± std over the seeds) and writes
DIR/comparison.{json,md}. Rerunning resumes: finished stages are reused.

Example (the README's main job; 5 minutes for one seed on a 2-core CPU):
  scu-pipeline --config=configs/mnist.py --workdir=runs/pipeline --seeds=0
"""

from __future__ import annotations

import pathlib

from absl import flags
from ml_collections import config_flags

from scu_jax.binaries import common
from scu_jax.experiments.pipeline import COMPARISON_TABLE, run_pipeline

PROGRAM = "scu-pipeline"
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file: configs/NAME.py[:reference,smoke]; any field overridden with "
    "--config.FIELD=VALUE (the fields: docs/config.md).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Root directory of the whole comparison.")
_SEEDS = flags.DEFINE_list("seeds", ["0"], "Comma-separated seeds (each trains its own system).")
_METHODS = flags.DEFINE_list("methods", ["retrain", "scu", "scu_no_cc", "vbu", "hbu", "finetune",
                                         "ssd", "l1_sparse", "salun"],
                             "Comma-separated unlearning methods.")
_OVERWRITE = common.define_overwrite_flag()
flags.mark_flags_as_required(["config", "workdir"])


def _main() -> None:
    config = common.config_or_fail(PROGRAM, _CONFIG)
    try:
        seeds = [int(seed) for seed in _SEEDS.value]
    except ValueError:
        common.fail(PROGRAM, f"--seeds={','.join(_SEEDS.value)}: must be comma-separated integers")
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        common.fail(PROGRAM, f"--seeds={','.join(_SEEDS.value)}: must be distinct integers >= 0")

    def body() -> None:


        run_pipeline(config, _WORKDIR.value, seeds=seeds, methods=_METHODS.value,
                     overwrite=_OVERWRITE.value)
        print((pathlib.Path(_WORKDIR.value) / COMPARISON_TABLE).read_text(), end="")

    common.run_guarded(PROGRAM, body)


run = common.entry(PROGRAM, _main, __doc__)


if __name__ == "__main__":
    run()

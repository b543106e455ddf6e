"""The paper's β_u sweep: SCU, its ablation and VBU at β_u = 1e-4 … 1 (AWGN, EDR 6 %), 3 seeds.

Argument: datasets (`mnist5k` default; `mnist`, `cifar10`, `cifar100`, `tfds`) and optionally
`smoke`. The original system and retraining do not depend on β_u: they run once per seed.

Run:
  scu-experiment --config=configs/experiments/beta_sweep.py --workdir=runs/beta_sweep
"""

import ml_collections

from scu_jax.experiments import sweeps


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return sweeps.experiment_config("beta_sweep", arg)

"""The paper's EDR sweep: every method at EDR 2, 4, 6, 8, 10 % (AWGN, paper family), 3 seeds.

Argument: datasets (`mnist5k`, the default embedded MNIST; `mnist`, `cifar10`, `cifar100`, or
`tfds` for all three through tfds), optionally `reference` (every base under the authors'
protocol, on its own channel: MNIST Rician 6 dB) and `smoke` (2 EDRs × 4 methods × 1 seed on tiny
systems, for tests). Each base system is the dataset's preset (configs/mnist.py, ...); the sweep
runs MINE on D_e only, with 500 steps.

Measured on the 2-core CPU (no GPU), embedded MNIST, 3 seeds, `--workers=2`: 150 cells (15
original systems, each with its retraining and 8 methods, the field's SSD, ℓ1-sparse and SalUn
among them) in 30 min 40 s from scratch. SCU forgets at every EDR (backdoor 70.7–95.7 % →
9.5–10.0 %) with D_clean accuracy 94.5–96.8 % (the original's 76.8–85.4 %), 85–169× faster than
retraining; SSD's α = 15 works at EDR 6 % only. `:reference` (105 cells: the paper's methods,
not the field's): 34 min 10 s; original backdoor 98.3–98.9 %, D_clean accuracy 93.8–97.0 %; SCU
backdoor 0.4–2.2 % with D_clean accuracy 96.5–98.0 % (the paper: 7.1–8.8 % and 97.4–98.3 %).
docs/results.md "Experiments" has the tables.

Run:
  scu-experiment --config=configs/experiments/edr_sweep.py --workdir=runs/edr_sweep
  scu-experiment --config=configs/experiments/edr_sweep.py:reference --workdir=runs/edr_reference
  scu-experiment --config=configs/experiments/edr_sweep.py:tfds --config.bases.mnist.data_dir=DIR \
      --workdir=runs/edr_sweep_tfds
  scu-report --workdir=runs/edr_sweep
"""

import ml_collections

from scu_jax.experiments import sweeps


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return sweeps.experiment_config("edr_sweep", arg)

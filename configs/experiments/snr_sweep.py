"""The paper's SNR sweep: every method at 5, 10, 15, 20, 25 dB for AWGN, Rayleigh and Rician
(paper family), EDR 6 %, 3 seeds.

Argument: datasets (`mnist5k` default; `mnist`, `cifar10`, `cifar100`, `tfds`) and optionally
`smoke`. On the embedded MNIST the 45 original systems train with a third of the main job's step
budget (100 codec + 50 receiver epochs) so that the sweep fits in an hour on 2 cores.

Measured on the 2-core CPU (no GPU), embedded MNIST, 3 seeds, `--workers=2`: 315 cells (45
original systems, each with its retraining and 5 methods) in 45 min 42 s from scratch. SCU
leaves 4.7–9.7 % backdoor at every channel and SNR with 92.7–95.4 % D_clean accuracy; the
original system's accuracy climbs from 63.5 % (AWGN, 5 dB) to 94.2–94.7 % at 25 dB. docs/results.md
("Sweeps") has the table.

Run:
  scu-experiment --config=configs/experiments/snr_sweep.py --workdir=runs/snr_sweep
  scu-experiment --config=configs/experiments/snr_sweep.py --config.grid.families=physical,paper \
      --workdir=runs/snr_sweep_physical
"""

import ml_collections

from scu_jax.experiments import sweeps


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return sweeps.experiment_config("snr_sweep", arg)

"""Corrective unlearning: every method given only part of D_e (10, 25, 50, 100 %), 3 seeds.

The backdoored training set is the main job's (AWGN 5 dB, EDR 6 %); each method, retraining
included, is given a seeded share f of D_e (`forget.known_fraction`), and the other triggered
images stay in D_r, where nothing marks them. The report tables the backdoor on every triggered
image against f per method, with the smallest f that brings it under 20 %, and draws it
(`figures/known_fraction_backdoor_accuracy_all.png`). One original system per seed serves every
f. Argument: datasets and `smoke`, as for the EDR sweep.

Measured on the 2-core CPU (no GPU), 2026-12-07: 108 cells in 21 min 54 s. With 10 % of D_e
known, retraining, fine-tuning and ℓ1-sparse leave the backdoor at 90–92 % (the original's 92 %),
SCU at 87 %, while VBU and HBU clear it by wrecking the decoder (test accuracy 40–42 %); all of
D_e known, they clear it. With `--config.bases.mnist5k.forget.expand=True` every method but SSD
clears it from 10 % known. docs/robust-forgetting.md "Only part of D_e known" has the tables.

Run:
  scu-experiment --config=configs/experiments/known_sweep.py --workdir=runs/known_sweep
  scu-report --workdir=runs/known_sweep
"""

import ml_collections

from scu_jax.experiments import sweeps


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return sweeps.experiment_config("known_sweep", arg)

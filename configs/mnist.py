"""Default config: the paper's MNIST setting on the embedded 5,000-image MNIST (no download).

Spec §3/§4: MLP codec (d = 20), AWGN channel of the paper family at 5 dB, EDR 6 % (base 1 →
target 2), β = 1e-4, Adam lr 1e-4 with grad-norm clip 5, batch 16; receiver trained first for 10
epochs on the poisoned training set and frozen, then the codec for 20 epochs.

Run:
  scu-train --config=configs/mnist.py --workdir=runs/mnist
  scu-train --config=configs/mnist.py:smoke --workdir=/tmp/smoke     # < 1 min on a CPU
Measured (2-core CPU, seed 0): see README.md "Results"; the numbers are filled in there by the
run that produced them.
"""

import ml_collections

from scu_jax import config as config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return config_lib.apply_variant(config_lib.default_config(), arg)

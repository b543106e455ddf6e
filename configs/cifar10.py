"""The paper's CIFAR-10 setting: ResNet-18-style codec (d = 3072), receiver trained jointly.

Spec §3: loss `β·KL + 30·MSE + CE/30`, Adam lr 5e-4, clip 5, batch 16, 20 epochs, AWGN at 20 dB,
random-crop augmentation; EDR 6 %, base 1 (automobile) → target 2 (bird).
Needs CIFAR-10 prepared for tfds under `--config.data_dir` (`tfds build cifar10 --data_dir=DIR`).

Run:
  scu-train --config=configs/cifar10.py --config.data_dir=DIR --workdir=runs/cifar10
  scu-train --config=configs/cifar10.py:smoke --workdir=/tmp/c10   # tiny widths, for tests
The full run needs an accelerator; not measured here (no download, no GPU on this machine).
"""

import ml_collections

from scu_jax import config as config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return config_lib.apply_variant(config_lib.cifar_config("cifar10"), arg)

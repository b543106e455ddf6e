"""The paper's CIFAR-100 setting on the 20 coarse labels: base 18 → target 2.

Same recipe as CIFAR-10 (configs/cifar10.py). Needs CIFAR-100 prepared for tfds.

Run:
  scu-train --config=configs/cifar100.py --config.data_dir=DIR --workdir=runs/cifar100
  scu-train --config=configs/cifar100.py:smoke --workdir=/tmp/c100
Not measured here (no download, no GPU on this machine).
"""

import ml_collections

from scu_jax import config as config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return config_lib.apply_variant(config_lib.cifar_config("cifar100"), arg)

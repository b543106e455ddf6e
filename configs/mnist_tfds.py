"""The paper's MNIST setting on the full MNIST (60,000 / 10,000) through tfds.data_source.

Needs MNIST prepared in tfds's array_record format under `--config.data_dir` (or tfds's default
directory): `tfds build mnist --data_dir=DIR` on a machine with network access.

Run:
  scu-train --config=configs/mnist_tfds.py --config.data_dir=DIR --workdir=runs/mnist_tfds
Not measured here: no machine of this project can download MNIST.
"""

import ml_collections

from scu_jax import config as config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return config_lib.apply_variant(config_lib.mnist_tfds_config(), arg)

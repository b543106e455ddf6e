"""The paper's MNIST setting on the full MNIST (60,000 / 10,000) through tfds.data_source.

Needs MNIST prepared in tfds's array_record format under `--config.data_dir` (or tfds's default
directory): `tfds build mnist --data_dir=DIR` on a machine with network access.

Variants (comma-separated): `reference` (the authors' protocol, as their script runs it:
`scu_jax.presets.use_reference_protocol` lists each difference from this default), `smoke`.

Run:
  scu-train --config=configs/mnist_tfds.py --config.data_dir=DIR --workdir=runs/mnist_tfds
  scu-train --config=configs/mnist_tfds.py:reference --config.data_dir=DIR --workdir=runs/mnist_ref
Not measured here: no machine of this project can download MNIST.
"""

import ml_collections

from scu_jax import presets


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return presets.apply_variant(presets.mnist_tfds_config(), arg)

"""The paper's CIFAR-100 setting on the 20 coarse labels: base 18 → target 2.

Same recipe as CIFAR-10 (configs/cifar10.py). Needs CIFAR-100 prepared for tfds.

Variants (comma-separated): `reference` (the authors' protocol, as their script runs it:
`scu_jax.presets.use_reference_protocol` lists each difference from this default), `smoke`.

Run:
  scu-train --config=configs/cifar100.py --config.data_dir=DIR --workdir=runs/cifar100
  scu-train --config=configs/cifar100.py:smoke --workdir=/tmp/c100
  scu-pipeline --config=configs/cifar100.py:reference --config.data_dir=DIR --workdir=runs/c100_ref
Not measured here (no download, no GPU on this machine).
"""

import ml_collections

from scu_jax import presets


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return presets.apply_variant(presets.cifar_config("cifar100"), arg)

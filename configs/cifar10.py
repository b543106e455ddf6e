"""The paper's CIFAR-10 setting: ResNet-18-style codec (d = 3072), receiver trained jointly.

The authors' CIFAR recipe: loss `β·KL + 30·MSE + CE/30`, Adam lr 5e-4, clip 5, batch 16,
20 epochs, AWGN at 20 dB, random-crop augmentation; EDR 6 %, base 1 (automobile) → target 2 (bird).
Needs CIFAR-10 prepared for tfds under `--config.data_dir` (`tfds build cifar10 --data_dir=DIR`).

Variants (comma-separated): `reference` (the authors' protocol, as their script runs it:
`scu_jax.presets.use_reference_protocol` lists each difference from this default), `smoke`.

Run:
  scu-train --config=configs/cifar10.py --config.data_dir=DIR --workdir=runs/cifar10
  scu-train --config=configs/cifar10.py:smoke --workdir=/tmp/c10   # tiny widths, for tests
  scu-pipeline --config=configs/cifar10.py:reference --config.data_dir=DIR --workdir=runs/c10_ref
The full run needs an accelerator; not measured here (no download, no GPU on this machine).
"""

import ml_collections

from scu_jax import presets


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return presets.apply_variant(presets.cifar_config("cifar10"), arg)

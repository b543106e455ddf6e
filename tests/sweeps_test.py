"""The paper's sweeps as experiment configs: presets per dataset and variant, bad arguments."""

import pytest

from scu_jax.errors import ConfigError
from scu_jax.experiments.grid import cell_config, expand, validate_experiment
from scu_jax.experiments.sweeps import experiment_config


def test_presets_of_the_sweeps():
    tfds = experiment_config("edr_sweep", "tfds")
    assert sorted(tfds.bases) == ["cifar10", "cifar100", "mnist"]
    assert tfds.bases.cifar10.model.name == "resnet18" and tfds.bases.cifar100.erasure.base_class == 18
    snr = experiment_config("snr_sweep")
    assert (snr.bases.mnist5k.train.epochs, snr.bases.mnist5k.train.receiver_epochs) == (100, 50)
    edr = experiment_config("edr_sweep")
    assert (edr.bases.mnist5k.train.epochs, edr.bases.mnist5k.evaluation.mi_steps) == (300, 500)
    assert tuple(edr.grid.edr) == (0.02, 0.04, 0.06, 0.08, 0.10)
    # The reference protocol keeps each dataset's own channel: Rician 6 dB for MNIST (the shipped
    # script), AWGN 20 dB for CIFAR, both with the scalar draw.
    reference = experiment_config("edr_sweep", "mnist5k,cifar10,reference")
    groups = {cell.group for cell in validate_experiment(reference)}
    assert {(g.dataset, g.channel, g.family, g.snr_db) for g in groups} == {
        ("mnist5k", "rician", "paper", 6.0), ("cifar10", "awgn", "paper", 20.0)}
    cell = next(c for c in expand(reference) if c.method == "scu" and c.group.dataset == "mnist5k")
    config = cell_config(reference.bases.mnist5k, cell)
    assert (config.channel.draw, config.evaluation.channel, config.unlearning.early_stop) == (
        "scalar", "none", False)


def test_unknown_experiment_argument():
    with pytest.raises(ConfigError, match="unknown experiment config argument 'imagenet'"):
        experiment_config("edr_sweep", "imagenet")

"""Config presets load and validation rejects each bad value with a one-line message."""

import importlib.util
import math
import pathlib

import pytest

from scu_jax import config as config_lib

CONFIG_DIR = pathlib.Path(__file__).resolve().parent.parent / "configs"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, CONFIG_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name,dataset,model", [
    ("mnist", "mnist5k", "mlp"), ("mnist_tfds", "mnist", "mlp"),
    ("cifar10", "cifar10", "resnet18"), ("cifar100", "cifar100", "resnet18"),
])
@pytest.mark.parametrize("variant", [None, "smoke"])
def test_presets_load_and_validate(name, dataset, model, variant):
    config = _load(name).get_config(variant)
    config_lib.validate_config(config)
    assert config.dataset == dataset and config.model.name == model
    if variant == "smoke":
        assert 0 < config.max_train_examples <= 1024


def test_paper_settings():
    mnist = _load("mnist").get_config()
    assert (mnist.channel.name, mnist.channel.family, mnist.channel.snr_db) == ("awgn", "paper", 5.0)
    assert (mnist.erasure.edr, mnist.erasure.base_class, mnist.erasure.target_class) == (0.06, 1, 2)
    assert (mnist.train.batch_size, mnist.train.learning_rate, mnist.train.beta) == (16, 1e-4, 1e-4)
    cifar100 = _load("cifar100").get_config()
    assert (cifar100.erasure.base_class, cifar100.channel.snr_db, cifar100.train.mse_weight) == (18, 20.0, 30.0)


def test_unknown_variant():
    with pytest.raises(config_lib.ConfigError, match="unknown config variant 'tiny'"):
        _load("mnist").get_config("tiny")


BAD_VALUES = [
    ("dataset", "imagenet", "must be one of"),
    ("channel.name", "laser", "must be one of"),
    ("channel.family", "exotic", "must be one of"),
    ("channel.snr_db", math.nan, "finite number"),
    ("channel.snr_db", math.inf, "finite number"),
    ("channel.k_factor", -1.0, "in [0.0"),
    ("erasure.edr", 0.0, "in (0.0, 0.5]"),
    ("erasure.edr", 0.51, "in (0.0, 0.5]"),
    ("erasure.target_class", 1, "must differ"),
    ("train.batch_size", 0, "in [1"),
    ("train.learning_rate", 0.0, "in (0.0"),
    ("train.epochs", -1, "in [0"),
    ("model.name", "vit", "must be one of"),
    ("eval_batch_size", 0, "in [1"),
    ("checkpoint_every_epochs", 0, "in [1"),
    ("evaluation.mi_sets", ("erased", "test"), "must be a subset of: erased, remain"),
]


@pytest.mark.parametrize("field,value,message", BAD_VALUES)
def test_validation_names_field_value_and_rule(field, value, message):
    config = config_lib.default_config()
    node = config
    *parents, leaf = field.split(".")
    for part in parents:
        node = node[part]
    node[leaf] = value
    with pytest.raises(config_lib.ConfigError) as error:
        config_lib.validate_config(config)
    text = str(error.value)
    assert text.startswith(f"config.{field}=") and message in text and "\n" not in text


def test_training_fingerprint_ignores_evaluation_fields():
    a, b = config_lib.default_config(), config_lib.default_config()
    b.eval_batch_size = 7
    assert config_lib.training_fingerprint(a) == config_lib.training_fingerprint(b)
    b.channel.snr_db = 6.0
    assert config_lib.training_fingerprint(a) != config_lib.training_fingerprint(b)


def test_config_from_json_round_trips_and_fills_new_fields():
    import json

    config = config_lib.apply_variant(config_lib.cifar_config("cifar100"), "smoke")
    stored = json.loads(config.to_json_best_effort())
    assert config_lib.config_from_json(stored).to_dict() == config.to_dict()
    del stored["eval_draws"], stored["unlearning"]["stop_on"]  # written before these existed
    stored["retired_field"] = 1
    rebuilt = config_lib.config_from_json(stored)
    assert rebuilt.eval_draws == config_lib.default_config().eval_draws
    assert rebuilt.unlearning.stop_on == "eval" and "retired_field" not in rebuilt
    assert rebuilt.model.widths == (8, 8, 16, 16) and rebuilt.erasure.base_class == 18

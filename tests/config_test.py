"""Config presets load and validation rejects each bad value with a one-line message."""

import importlib.util
import json
import math
import pathlib

import ml_collections
import numpy as np
import pytest

from scu_jax import config as config_lib
from scu_jax import presets

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
@pytest.mark.parametrize("variant", [None, "smoke", "reference", "reference,smoke"])
def test_presets_load_and_validate(name, dataset, model, variant):
    config = _load(name).get_config(variant)
    config_lib.validate_config(config)
    assert config.dataset == dataset and config.model.name == model
    if variant and "smoke" in variant:
        assert 0 < config.max_train_examples <= 1024
    assert (config.channel.draw == "scalar") == bool(variant and "reference" in variant)


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
    ("forget.known_fraction", 0.0, "in (0.0, 1.0]"),
    ("forget.known_fraction", 1.5, "in (0.0, 1.0]"),
    ("forget.known_fraction", math.nan, "finite number"),
]


def test_known_fraction_is_the_backdoor_protocols_alone():
    config = config_lib.default_config()
    config.forget.kind, config.forget.known_fraction = "random", 0.5
    with pytest.raises(config_lib.ConfigError, match=r"^config.forget.known_fraction=0.5: applies "
                                                      "to forget.kind='backdoor' only$"):
        config_lib.validate_config(config)


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

    config = presets.apply_variant(presets.cifar_config("cifar100"), "smoke")
    stored = json.loads(config.to_json_best_effort())
    assert config_lib.config_from_json(stored).to_dict() == config.to_dict()
    del stored["eval_draws"], stored["unlearning"]["stop_on"]  # written before these existed
    stored["retired_field"] = 1
    rebuilt = config_lib.config_from_json(stored)
    assert rebuilt.eval_draws == config_lib.default_config().eval_draws
    assert rebuilt.unlearning.stop_on == "eval" and "retired_field" not in rebuilt
    assert rebuilt.model.widths == (8, 8, 16, 16) and rebuilt.erasure.base_class == 18


def test_reference_presets_set_the_authors_protocol():
    mnist = presets.apply_variant(config_lib.default_config(), "reference")
    config_lib.validate_config(mnist)
    assert (mnist.channel.name, mnist.channel.snr_db, mnist.channel.k_factor, mnist.channel.draw) == (
        "rician", 6.0, 2.0, "scalar")
    assert mnist.evaluation.channel == "none" and mnist.train.reset_optimizer_each_epoch
    assert mnist.model.init == "torch" and mnist.erasure.remain_size == "rest"
    # SCU: the paper's 4,500 steps at lr 1e-4 (300 epochs of 15 batches), no early stop.
    scu = config_lib.method_config(mnist, "scu").unlearning
    assert (scu.learning_rate, scu.max_epochs, scu.early_stop) == (1e-4, 300, False)
    hbu = config_lib.method_config(mnist, "hbu").unlearning
    assert hbu.early_stop and (hbu.batch_stop, hbu.epoch_stop) == (0.02, 0.10) and hbu.hbu_fixed_probe
    assert len(config_lib.method_config(mnist, "hbu").unlearning.per_method) == 0
    # The rest is the default's: the embedded data's step budget, β_u, receiver recipe.
    default = config_lib.default_config()
    assert mnist.train.to_dict() | {"reset_optimizer_each_epoch": False} == default.train.to_dict()
    cifar10 = presets.apply_variant(presets.cifar_config("cifar10"), "reference")
    config_lib.validate_config(cifar10)
    u = cifar10.unlearning
    assert (cifar10.channel.name, cifar10.channel.snr_db, cifar10.evaluation.receiver) == ("awgn", 20.0, "own")
    assert (cifar10.eval_batch_size, cifar10.eval_draws, cifar10.train.crop_once) == (16, 1, True)
    assert cifar10.erasure.remain_size == "requested" and cifar10.model.init == "torch"
    assert (u.unit_mse_in_weights, u.partial_batch, u.augment_remain, u.batch_stop, u.epoch_stop) == (
        True, "drop", True, 0.02, 0.0)
    assert config_lib.method_config(cifar10, "hbu").unlearning.partial_batch == "wrap"
    cifar100 = presets.apply_variant(presets.cifar_config("cifar100"), "reference")
    assert cifar100.unlearning.epoch_stop == 0.10 and cifar100.unlearning.lambda_kl == 1e-4
    assert cifar100.model.receiver == "resnet18" and cifar10.model.receiver == "mlp"
    # The default protocol is untouched by the variant's existence.
    assert default.channel.draw == "element" and default.evaluation.channel == "train"
    assert default.model.init == "flax" and default.erasure.remain_size == "rest"
    assert presets.cifar_config("cifar10").unlearning.erased_objective == "mse+ce"


def test_per_method_entries_are_validated_and_survive_json():
    import json

    config = presets.apply_variant(config_lib.default_config(), "reference")
    rebuilt = config_lib.config_from_json(json.loads(config.to_json_best_effort()))
    assert rebuilt.unlearning.per_method.to_dict() == {"hbu": {"early_stop": True}}
    with config.unlocked():
        config.unlearning.per_method.hbu.magic = 1
    with pytest.raises(config_lib.ConfigError, match=r"config.unlearning.per_method.hbu=\['magic'\]"):
        config_lib.validate_config(config)
    bad = presets.apply_variant(config_lib.default_config(), "reference")
    bad.unlearning.per_method.hbu = ml_collections.ConfigDict({"max_epochs": 0})
    with pytest.raises(config_lib.ConfigError,
                       match=r"^config.unlearning.per_method.hbu.max_epochs=0: must be an integer"):
        config_lib.validate_config(bad)
    bad.unlearning.per_method = ml_collections.ConfigDict({"sgd": {"max_epochs": 1}})
    with pytest.raises(config_lib.ConfigError, match="config.unlearning.per_method=\\['sgd'\\]"):
        config_lib.validate_config(bad)
    with pytest.raises(config_lib.ConfigError, match="unknown config variant 'faithful'"):
        presets.apply_variant(config_lib.default_config(), "reference,faithful")


def test_a_checkpoint_written_before_new_fields_stays_compatible(tmp_path):
    from scu_jax.runs.checkpointing import Checkpoints

    config = config_lib.default_config()
    checkpoints = Checkpoints(tmp_path)
    checkpoints.save(1, {"x": np.zeros(2)}, config)
    checkpoints.close()
    meta_file = next(tmp_path.rglob("config/metadata"))
    meta = json.loads(meta_file.read_text())
    del meta["training"]["channel"]["draw"], meta["training"]["train"]["crop_once"]
    meta_file.write_text(json.dumps(meta))
    Checkpoints(tmp_path, read_only=True).check_compatible(config)  # their defaults: compatible
    config.channel.draw = "scalar"
    with pytest.raises(ValueError, match="config.channel.draw is 'element' in the checkpoint"):
        Checkpoints(tmp_path, read_only=True).check_compatible(config)


def test_first_difference_names_the_first_differing_field_in_sorted_order():
    saved = {"train": {"epochs": 300, "batch_size": 16}, "seed": 0}
    wanted = {"train": {"epochs": 20, "batch_size": 8}, "seed": 0, "extra": 1}
    assert config_lib.first_difference(saved, saved) == ""
    # Sorted keys: "extra" (None there) comes before "train", and batch_size before epochs.
    assert config_lib.first_difference(saved, wanted) == "config.extra is None there but 1 now"
    del wanted["extra"]
    assert (config_lib.first_difference(saved, wanted, "in the checkpoint")
            == "config.train.batch_size is 16 in the checkpoint but 8 now")
    assert config_lib.first_difference(None, {"a": 1}) == "config is None there but {'a': 1} now"


def test_check_field_raises_one_line_naming_field_value_and_rule():
    config_lib.check_field(True, "grid.edr", (0.1,), "anything")
    with pytest.raises(config_lib.ConfigError) as error:
        config_lib.check_field(False, "grid.edr", (0.7,), "must be numbers in (0, 0.5]")
    assert str(error.value) == "config.grid.edr=(0.7,): must be numbers in (0, 0.5]"

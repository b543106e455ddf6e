"""Evaluation metrics: consistent with each other, deterministic, every image counted once."""

import jax
import numpy as np
import pytest

from scu_jax import config as config_lib
from scu_jax import presets
from scu_jax import evaluation
from scu_jax.methods import training
from scu_jax.models import init_system
from scu_jax.runs import build
from scu_jax.runs.build import build_system


@pytest.fixture(scope="module")
def untrained():
    config = presets.apply_variant(config_lib.default_config(), "smoke")
    split = build.load_split(config)
    shape, classes = build.image_shape_and_classes(split, config)
    system = build_system(config, shape, classes)
    variables = init_system(system, jax.random.PRNGKey(0), shape)
    state = training.train_state_from(variables["params"], variables["batch_stats"],
                                      build.recipe_of(config))
    return config, split, system, state


def test_per_sample_metrics_agree_and_cover_every_image(untrained):
    config, split, system, state = untrained
    images = split.clean_images[:37]
    rows = evaluation.per_sample_metrics(system, state.params, state.batch_stats, images,
                                         batch_size=16, key=jax.random.PRNGKey(0))
    assert {name: value.shape for name, value in rows.items()} == {
        name: (37,) for name in ("sse", "psnr", "ssim", "prediction", "input_prediction")}
    # x̂ is a sigmoid, so clipping is a no-op and PSNR = 10·log10(1 / (SSE / pixels)).
    np.testing.assert_allclose(rows["psnr"], 10 * np.log10(784 / rows["sse"]), rtol=1e-4)
    assert np.all((rows["ssim"] > -1) & (rows["ssim"] < 1))
    again = evaluation.per_sample_metrics(system, state.params, state.batch_stats, images,
                                          batch_size=16, key=jax.random.PRNGKey(0))
    np.testing.assert_array_equal(rows["sse"], again["sse"])
    other = evaluation.per_sample_metrics(system, state.params, state.batch_stats, images,
                                          batch_size=16, key=jax.random.PRNGKey(1))
    assert not np.array_equal(rows["sse"], other["sse"])  # the channel noise is really drawn


def test_evaluate_system_reports_protocol_metrics(untrained):
    config, split, system, state = untrained
    protocol = build.protocol_of(config)
    metrics = evaluation.evaluate_system(system, state.params, state.batch_stats, split, protocol)
    for name in ("accuracy_clean", "accuracy_test", "backdoor_accuracy", "input_backdoor_accuracy"):
        assert 0.0 <= metrics[name] <= 1.0
    assert metrics["num_erased"] == len(split.erased_images) == 61  # round(0.06 · 1024)
    # An untrained sigmoid decoder outputs ≈ 0.5 everywhere, so SSE ≈ 784 · E[(x − 0.5)²] with
    # E[(x − 0.5)²] between 0.1 and 0.3 on MNIST digits (mostly black: 0.25 at pure black).
    assert 784 * 0.1 < metrics["mse_clean"] < 784 * 0.3
    assert 784 * 0.1 < metrics["mse_erased"] < 784 * 0.3
    # The same state gives the same numbers (fixed evaluation key).
    assert evaluation.evaluate_system(system, state.params, state.batch_stats, split,
                                      protocol) == metrics


def test_empty_set_is_refused(untrained):
    _, split, system, state = untrained
    with pytest.raises(ValueError, match="empty"):
        evaluation.per_sample_metrics(system, state.params, state.batch_stats,
                                      split.clean_images[:0], batch_size=4, key=jax.random.PRNGKey(0))


def test_evaluation_without_the_channel_reads_the_clean_latent(untrained):
    """`evaluation.channel = "none"` (the reference's MNIST evaluation) equals evaluating a system
    built without a channel, and differs from reading through the 5 dB training channel."""
    config, split, system, state = untrained
    off = config.copy_and_resolve_references()
    off.evaluation.channel = "none"
    metrics = evaluation.evaluate_system(system, state.params, state.batch_stats, split,
                                         build.protocol_of(off))
    noiseless = config.copy_and_resolve_references()
    noiseless.channel.name = "none"
    shape, classes = build.image_shape_and_classes(split, config)
    expected = evaluation.evaluate_system(build_system(noiseless, shape, classes), state.params,
                                          state.batch_stats, split, build.protocol_of(noiseless))
    assert metrics.pop("evaluation_channel") == "none" and expected.pop("evaluation_channel") == "train"
    assert metrics == expected
    through = evaluation.evaluate_system(system, state.params, state.batch_stats, split,
                                         build.protocol_of(config))
    assert through["mse_clean"] != metrics["mse_clean"]
    assert build.describe_protocol(off) == (
        "trained through awgn, paper family, 5 dB, noise per element; evaluated without the "
        "channel, read by the original system's receiver")


def test_backdoor_on_every_triggered_image_where_only_part_of_d_e_is_known(untrained):
    config, split, system, state = untrained
    protocol = build.protocol_of(config)
    full = evaluation.evaluate_system(system, state.params, state.batch_stats, split, protocol)
    assert full["backdoor_accuracy_all"] == full["backdoor_accuracy"] and full["num_unknown"] == 0
    assert "backdoor_accuracy_unknown" not in full
    config = config.copy_and_resolve_references()
    config.forget.known_fraction = 0.25
    part = build.load_split(config)
    metrics = evaluation.evaluate_system(system, state.params, state.batch_stats, part, protocol)
    known, unknown = len(part.erased_images), part.num_unknown
    assert (known, unknown, metrics["num_unknown"]) == (15, 46, 46)  # round(0.25 · 61) known
    np.testing.assert_allclose(metrics["backdoor_accuracy_all"], (
        known * metrics["backdoor_accuracy"] + unknown * metrics["backdoor_accuracy_unknown"])
        / (known + unknown))
    # D_clean and the test set are read as at 100 % known: the same images and noise draws.
    for name in ("accuracy_clean", "mse_clean", "accuracy_test", "mse_test"):
        assert metrics[name] == full[name]

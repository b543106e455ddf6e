"""The CIFAR-10 / CIFAR-100 paths on real pixels: the 20-image fixtures `cifar10_real20` and
`cifar100_real20` (the first 20 official test images of each, from the foolbox 3.3.4 wheel).

No CIFAR can be downloaded here, so these are the only real CIFAR pixels the suite sees; the
full-scale runs need the data sets prepared with tfds (docs/data.md)."""

import importlib.metadata
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import dm_pix as pix

import scu_jax
from scu_jax import config as config_lib
from scu_jax import evaluation, presets
from scu_jax.data import augment, sources, trigger_mask
from scu_jax.errors import DatasetUnavailableError
from scu_jax.methods import Batch, training
from scu_jax.runs import build, train, unlearn
from scu_jax.runs import saved as saved_lib
from scu_jax.runs.evaluate import evaluate_workdir

# The official test sets' first 20 labels (CIFAR-100: the coarse labels of its fine ones:
# mountain, forest, seal, mushroom, sea, tulip, camel, butterfly, cloud, apple, sea, skunk,
# streetcar, rocket, lamp, lion, tulip, wolf, rose, orange).
CIFAR10_LABELS = [3, 8, 8, 0, 6, 6, 1, 6, 3, 1, 0, 9, 5, 7, 9, 8, 5, 7, 8, 6]
CIFAR100_LABELS = [10, 10, 0, 4, 10, 2, 11, 7, 10, 4, 10, 12, 19, 19, 5, 8, 2, 8, 2, 4]
# A base class the 20 images hold (CIFAR-100's preset erases class 18, of which they hold none).
BASE_CLASS = {"cifar10_real20": 1, "cifar100_real20": 10}
COMBINATIONS = [(dataset, variant) for dataset in ("cifar10_real20", "cifar100_real20")
                for variant in ("smoke", "reference,smoke")]


def _config(dataset, variant):
    config = presets.apply_variant(presets.cifar_config(dataset), variant)
    config.erasure.base_class = BASE_CLASS[dataset]
    config.erasure.edr = 0.1  # 2 of the 20 images (CIFAR-10's class 1 has 2, CIFAR-100's 10 has 5)
    config.evaluation.mi_steps = 0
    config_lib.validate_config(config)
    return config


@pytest.mark.parametrize("name, labels, classes", [("cifar10_real20", CIFAR10_LABELS, 10),
                                                    ("cifar100_real20", CIFAR100_LABELS, 20)])
def test_the_fixtures_are_the_official_test_images(name, labels, classes):
    dataset = scu_jax.load_dataset(name)
    assert name in sources.DATASETS and dataset.num_classes == classes == sources.num_classes(name)
    assert dataset.train_images.shape == (20, 32, 32, 3) and dataset.train_images.dtype == np.uint8
    assert dataset.train_labels.tolist() == labels and dataset.train_labels.dtype == np.int32
    np.testing.assert_array_equal(dataset.test_images, dataset.train_images)
    assert not dataset.train_images.flags.writeable
    # Natural photographs: the full range used, colour channels that differ, no two images alike.
    pixels = dataset.train_images.astype(np.float64)
    assert pixels.min() <= 10 and pixels.max() >= 245 and 30 < pixels.std() < 90
    assert np.abs(pixels[..., 0] - pixels[..., 2]).mean() > 5
    assert len({image.tobytes() for image in dataset.train_images}) == 20
    # Every coarse class gathers five fine ones.
    assert np.bincount(sources.CIFAR100_COARSE).tolist() == [5] * 20


def test_a_missing_fixture_wheel_is_one_line(monkeypatch):
    sources._load_real20.cache_clear()

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    with pytest.raises(DatasetUnavailableError,
                       match=r"^dataset 'cifar10_real20' is the 20 CIFAR test images of the foolbox "
                             r"3\.3\.4 wheel and foolbox is not installed: pip install --no-deps "
                             r"foolbox==3\.3\.4$"):
        scu_jax.load_dataset("cifar10_real20")
    monkeypatch.undo()
    sources._load_real20.cache_clear()


def test_psnr_and_ssim_read_real_images_as_they_should():
    x = jnp.asarray(scu_jax.load_dataset("cifar10_real20").test_images, jnp.float32) / 255.0
    np.testing.assert_allclose(pix.ssim(x, x), 1.0, atol=1e-5)
    noise = 0.05 * jax.random.normal(jax.random.PRNGKey(0), x.shape)
    noisy = jnp.clip(x + noise, 0.0, 1.0)
    psnr = np.asarray(pix.psnr(noisy, x))
    # σ = 0.05 gives 26.0 dB; clipping at 0 and 1 removes a little of the noise.
    assert np.all((psnr > 25.8) & (psnr < 27.5)), psnr
    ssim = np.asarray(pix.ssim(noisy, x))
    assert np.all((ssim > 0.4) & (ssim < 0.98)), ssim


@pytest.mark.parametrize("dataset, variant", COMBINATIONS)
def test_the_trigger_is_stamped_and_kept_by_the_crop(dataset, variant):
    config = _config(dataset, variant)
    split = build.load_split(config)
    mask = trigger_mask((32, 32, 3))
    assert len(split.erased_images) == 2
    assert np.all(split.erased_images[:, mask] == 255)
    # Real pixels under the trigger were not white before it was stamped.
    source = scu_jax.load_dataset(dataset).train_images[split.erased_indices]
    assert np.any(source[:, mask] != 255)
    if not config.train.crop_once:  # the default: D_e is the source, stamped
        np.testing.assert_array_equal(split.erased_images[:, ~mask], source[:, ~mask])
    images = jnp.asarray(split.train_images, jnp.float32) / 255.0
    triggered = np.asarray(split.train_is_erased)
    for seed in range(8):
        cropped = np.asarray(augment.crop_keeping_trigger(jax.random.PRNGKey(seed), images))
        assert np.all(cropped[triggered][:, mask] == 1.0)


# The other two combinations train, restore and unlearn end to end below.
@pytest.mark.parametrize("dataset, variant", [("cifar10_real20", "reference,smoke"),
                                              ("cifar100_real20", "smoke")])
def test_one_training_and_one_scu_step_on_real_pixels(dataset, variant):
    config = _config(dataset, variant)
    split, system, image_shape = build.build_for(config)
    recipe = build.recipe_of(config)
    state = training.initial_state(system, recipe, config.seed, image_shape)
    step = jax.jit(scu_jax.codec_step(system, recipe))
    batch = training.Examples(jnp.asarray(split.train_images[:8]), jnp.asarray(split.train_labels[:8]))
    key = jax.random.PRNGKey(0)
    trained, metrics = step(state, batch, key)
    assert np.isfinite(float(metrics.loss)) and 0.0 <= float(metrics.accuracy) <= 1.0
    chex.assert_tree_all_finite(trained.params)
    assert not np.allclose(jax.tree.leaves(trained.params)[0], jax.tree.leaves(state.params)[0])

    scu_config = config_lib.method_config(config, "scu")
    method = build.method_of(scu_config, system)
    unlearn_state = method.init(trained.params, trained.batch_stats)
    remain = split.remain_images[:2]
    unlearned, unlearn_metrics = jax.jit(method.step)(
        unlearn_state, Batch(jnp.asarray(split.erased_images), jnp.asarray(split.erased_labels),
                             jnp.asarray(remain), jnp.asarray(split.remain_labels[:2])), key)
    assert np.isfinite(float(unlearn_metrics.loss))
    chex.assert_tree_all_finite(unlearned.params)
    np.testing.assert_allclose(float(unlearn_metrics.a + unlearn_metrics.b), 1.0, rtol=1e-5)


def _check_images_read_sanely(results):
    for part in ("clean", "erased", "test"):
        mse, psnr, ssim = (results[f"{metric}_{part}"] for metric in ("mse", "psnr", "ssim"))
        # A few steps on 18 images decode blurs: real photographs at 5–20 dB, little structure.
        assert 5.0 < psnr < 20.0 and -0.2 < ssim < 0.6 and 0.0 <= results[f"accuracy_{part}"] <= 1.0
        # MSE is the per-image sum of squared errors over 3,072 values; the mean of the images'
        # PSNRs is at least the PSNR of the mean error (Jensen), and clipping x̂ only raises it.
        floor = 10 * np.log10(3072 / mse)
        assert floor - 0.01 <= psnr <= floor + 3.0, (part, psnr, floor)


def _method_config(config, method, **unlearning):
    method_config = config_lib.method_config(config, method)
    method_config.unlearning.method = method
    for name, value in unlearning.items():
        method_config.unlearning[name] = value
    return method_config


def test_cifar10_trains_restores_and_unlearns_with_batchnorm_and_the_ce_objective(tmp_path):
    """The ResNet codec (BatchNorm, joint receiver) through training, an Orbax round trip and
    SCU's CE objective, default protocol, on real pixels."""
    config = _config("cifar10_real20", "smoke")
    state = train.train_and_evaluate(config, str(tmp_path / "train"))
    trained = json.loads((tmp_path / "train" / "results.json").read_text())
    assert trained["dataset"] == "cifar10_real20" and trained["num_test"] == 20
    _check_images_read_sanely(trained)
    # The Orbax round trip: the saved system is the one training returned, leaf for leaf.
    split, system, image_shape = build.build_for(config)
    params, batch_stats, _ = saved_lib.load_variables(tmp_path / "train", system, config, image_shape)
    chex.assert_trees_all_equal(params, state.params)
    chex.assert_trees_all_equal(batch_stats, state.batch_stats)
    assert jax.tree.leaves(batch_stats)  # the ResNet's BatchNorm statistics travelled too

    scu_config = _method_config(config, "scu", max_epochs=1)
    assert scu_config.unlearning.erased_objective == "mse+ce" and scu_config.train.ce_weight > 0
    results = unlearn.unlearn_and_evaluate(scu_config, str(tmp_path / "train"), str(tmp_path / "scu"))
    assert results["steps"] >= 1 and results["method"] == "scu"
    assert all(np.isfinite(results[f"{metric}_{part}"]) for metric in ("mse", "psnr", "ssim")
               for part in ("clean", "erased", "test"))
    unlearned, unlearned_stats, _ = saved_lib.load_variables(tmp_path / "scu", system, scu_config,
                                                           image_shape)
    # Both the codec and the jointly trained receiver moved; BatchNorm statistics were updated.
    for part in ("codec", "receiver"):
        assert not all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(params[part]),
                                                         jax.tree.leaves(unlearned[part])))
    assert not all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(batch_stats),
                                                     jax.tree.leaves(unlearned_stats)))
    # One instrument: the original receiver reads the row; the unlearned one is an extra reading.
    assert results["receiver"] == "original"
    assert {f"own_receiver_{name}" for name in evaluation.RECEIVER_METRICS} <= set(results)
    # On a CPU the ResNet's epochs dispatch one step at a time (XLA runs its convolutions slower
    # in loops); unlearning_test.py::test_per_step_epochs_equal_the_scan_fused_epoch checks it.
    assert build.convolutions_slow_in_loops(scu_config)


def test_cifar100_reference_protocol_end_to_end(tmp_path):
    """The CIFAR-100 `reference` preset on real pixels: crops taken once, scalar channel draws,
    the ResNet receiver (BatchNorm), SCU with its quirks (unit-MSE weights, cropped D_r, dropped
    partial batch), every system read by its own receiver."""
    config = _config("cifar100_real20", "reference,smoke")
    assert config.model.receiver == "resnet18"
    config.erasure.edr = 0.3  # 6 asked, the 5 images of class 10: a partial last batch of 3
    state = train.train_and_evaluate(config, str(tmp_path / "train"))
    _check_images_read_sanely(json.loads((tmp_path / "train" / "results.json").read_text()))
    split = build.load_split(config)
    # The 2 % batch stop and the 10 % D_e stop off, so that the step count is exact (the stops
    # have their own tests).
    scu_config = _method_config(config, "scu", max_epochs=2, batch_size=3, batch_stop=0.0,
                                epoch_stop=0.0)
    results = unlearn.unlearn_and_evaluate(scu_config, str(tmp_path / "train"), str(tmp_path / "scu"))
    full_batches = len(split.erased_images) // 3
    assert len(split.erased_images) == 5 and full_batches == 1
    # ⌊|D_e|/B⌋ steps an epoch, and no epoch-level stop: both epochs run.
    assert results["epochs"] == 2 and results["steps"] == 2 * full_batches
    assert results["receiver"] == "own" and "original_receiver_backdoor_accuracy" in results
    assert results["protocol"].startswith("trained through awgn, paper family, 20 dB, one noise "
                                          "scalar per call; evaluated through the training channel")
    assert np.isfinite(results["mse_clean"])
    # The receiver's BatchNorm statistics were trained, then unlearned with the codec, and the
    # original's are kept with the result (scu-evaluate reads them back); the trained system
    # restores as training returned it.
    _, system, _ = build.build_for(scu_config)
    trained_params, trained_stats, _ = saved_lib.load_variables(tmp_path / "train", system, scu_config,
                                                              (32, 32, 3))
    chex.assert_trees_all_equal(trained_params, state.params)
    params, stats, _ = saved_lib.load_variables(tmp_path / "scu", system, scu_config, (32, 32, 3))
    assert "receiver" in trained_stats and not all(
        np.allclose(a, b) for a, b in zip(jax.tree.leaves(trained_stats["receiver"]),
                                          jax.tree.leaves(stats["receiver"])))
    alone = evaluate_workdir(str(tmp_path / "scu"))
    assert alone["original_receiver_backdoor_accuracy"] == pytest.approx(
        results["original_receiver_backdoor_accuracy"], abs=1e-9)

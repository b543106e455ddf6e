"""Training steps and `train_and_evaluate`: loss decreases, one trace, resume is exact."""

import json
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from scu_jax import errors, evaluation
from scu_jax import config as config_lib
from scu_jax import presets
from scu_jax.runs import train
from scu_jax.runs.checkpointing import Checkpoints
from scu_jax.errors import CheckpointMismatchError
from scu_jax.data import augment, trigger_mask
from scu_jax import engine
from scu_jax.methods import training
from scu_jax.methods.training import Examples
from scu_jax.runs import build
from scu_jax.runs.summaries import read_scalars


def _smoke_config():
    return presets.apply_variant(config_lib.default_config(), "smoke")


def _setup(config):
    split = build.load_split(config)
    shape, classes = build.image_shape_and_classes(split, config)
    system = build.build_system(config, shape, classes)
    state = training.initial_state(system, build.recipe_of(config), config.seed, shape)
    return split, system, state


def test_codec_step_lowers_loss_and_traces_once():
    config = _smoke_config()
    config.train.learning_rate = 1e-3
    split, system, state = _setup(config)
    images = jnp.asarray(split.train_images[:64])
    labels = jnp.asarray(split.train_labels[:64])
    step = chex.assert_max_traces(training.codec_step(system, build.recipe_of(config)), n=1)
    jitted = jax.jit(step, donate_argnums=0)
    key = jax.random.PRNGKey(1)
    losses = []
    for i in range(150):
        batch = slice(16 * (i % 4), 16 * (i % 4 + 1))
        state, metrics = jitted(state, Examples(images[batch], labels[batch]), key)
        losses.append(float(metrics.loss))
    chex.assert_tree_all_finite(state.params)
    assert int(state.step) == 150
    # Starts near the MSE of a half-grey image on MNIST (~0.2) and falls well below it.
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])


def test_receiver_step_learns_and_leaves_codec_untouched():
    config = _smoke_config()
    config.train.receiver_learning_rate = 1e-3
    split, system, state = _setup(config)
    codec_before = jax.tree.map(np.asarray, state.params["codec"])
    phase = engine.Phase("receiver", training.receiver_step(system, build.recipe_of(config)),
                         range(1), batches=None, gather=training.gather_examples)
    runner = engine.make_block(phase)
    data = Examples(jnp.asarray(split.train_images), jnp.asarray(split.train_labels))
    indices = np.arange(512, dtype=np.int32).reshape(32, 16)
    done, key = jnp.zeros((), bool), jax.random.PRNGKey(0)
    state, _, first, _, finite, _ = runner(state, done, indices, data, key, None)
    assert bool(finite)
    for _ in range(3):
        state, _, last, _, finite, _ = runner(state, done, indices, data, key, None)
    assert float(last.loss.mean()) < 0.5 * float(first.loss.mean())
    assert float(last.accuracy.mean()) > 0.8
    chex.assert_trees_all_equal(codec_before, jax.tree.map(np.asarray, state.params["codec"]))


def test_random_crop_keeps_shape_and_shifts():
    images = jnp.arange(2 * 6 * 6 * 1, dtype=jnp.float32).reshape(2, 6, 6, 1) + 1
    cropped = augment.random_crop(jax.random.PRNGKey(0), images, padding=2)
    assert cropped.shape == images.shape
    # Every output pixel is either padding (0) or some input pixel of the same image.
    for i in range(2):
        assert set(np.unique(cropped[i])) <= set(np.unique(images[i])) | {0.0}


def _params_of(workdir, config):
    split, _, state = _setup(config)
    del split
    return Checkpoints(workdir).restore(state)


def test_train_and_evaluate_smoke_resume_and_rerun(tmp_path):
    config = _smoke_config()
    full = tmp_path / "full"
    state = train.train_and_evaluate(config, str(full))
    results = json.loads((full / "results.json").read_text())
    for name in ("accuracy_clean", "accuracy_test", "backdoor_accuracy", "mse_clean", "mse_erased",
                 "psnr_clean", "ssim_clean", "train_seconds"):
        assert np.isfinite(results[name]), name
    assert 0.0 <= results["accuracy_clean"] <= 1.0 and 0.0 <= results["ssim_clean"] <= 1.0
    split, system, initial = _setup(config)
    untrained = evaluation.evaluate_system(system, initial.params, initial.batch_stats, split,
                                           build.protocol_of(config))
    assert results["mse_clean"] < 0.7 * untrained["mse_clean"]
    assert results["input_accuracy_clean"] > 0.8  # the receiver learned digit 1
    steps_per_epoch = 1024 // 16
    epochs = config.train.receiver_epochs + config.train.epochs  # 3 + 4 in the smoke variant
    assert results["steps"] == int(state.step) == epochs * steps_per_epoch
    chex.assert_tree_all_finite(state.params)
    # The curves, in TensorBoard event files under the workdir: every epoch's means, every
    # `summary_every_steps`-th step; the codec's loss falls.
    curves = read_scalars(full / "summaries" / "train")
    assert [step for step, _ in curves["receiver/epoch/loss"]] == [64, 128, 192]
    assert [step for step, _ in curves["codec/epoch/loss"]] == [256, 320, 384, 448]
    every = config.summary_every_steps
    assert [step for step, _ in curves["codec/loss"]] == [s for s in range(193, 449)
                                                          if s % every == 0]
    assert curves["codec/epoch/loss"][-1][1] < curves["codec/epoch/loss"][0][1]
    assert all(0 <= v <= 1 for _, v in curves["receiver/epoch/accuracy"])

    # Interrupted after the last-but-one epoch: drop the last checkpoint, rerun, same state.
    resumed = tmp_path / "resumed"
    shutil.copytree(full, resumed)
    shutil.rmtree(resumed / "checkpoints" / str(epochs))
    (resumed / "results.json").unlink()
    assert Checkpoints(resumed).latest_step() == epochs - 1
    resumed_state = train.train_and_evaluate(config, str(resumed))
    chex.assert_trees_all_close(jax.tree.map(np.asarray, resumed_state.params),
                                jax.tree.map(np.asarray, state.params), atol=1e-6)
    # The interrupted run's curves after the last checkpoint are superseded, not doubled.
    resumed_curves = read_scalars(resumed / "summaries" / "train")
    assert [step for step, _ in resumed_curves["codec/epoch/loss"]] == [256, 320, 384, 448]
    assert [s for s, _ in resumed_curves["codec/loss"]] == [s for s, _ in curves["codec/loss"]]
    np.testing.assert_allclose([v for _, v in resumed_curves["codec/loss"]],
                               [v for _, v in curves["codec/loss"]], atol=1e-6)
    resumed_results = json.loads((resumed / "results.json").read_text())
    for name in ("accuracy_clean", "backdoor_accuracy", "mse_clean", "mse_erased"):
        assert resumed_results[name] == pytest.approx(results[name], abs=1e-5)

    # A rerun of a finished run trains nothing more.
    again = train.train_and_evaluate(config, str(full))
    assert int(again.step) == int(state.step)

    # Another configuration in the same workdir is refused before anything is written.
    other = _smoke_config()
    other.channel.snr_db = 10.0
    before = sorted(p.name for p in (full / "checkpoints").iterdir())
    with pytest.raises(CheckpointMismatchError, match="snr_db is 5.0 in the checkpoint but 10.0"):
        train.train_and_evaluate(other, str(full))
    assert sorted(p.name for p in (full / "checkpoints").iterdir()) == before


def _poison_codec_step(monkeypatch, poison):
    """Makes training use the real codec step followed by `poison(old_state, new_state, metrics)`."""
    real_codec_step = training.codec_step

    def poisoned_codec_step(system, recipe):
        step = real_codec_step(system, recipe)

        def poisoned(state, batch, key):
            return poison(state, *step(state, batch, key))

        return poisoned

    monkeypatch.setattr(training, "codec_step", poisoned_codec_step)


def test_diverging_run_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    _poison_codec_step(monkeypatch, lambda old, new, metrics: (
        new, metrics._replace(loss=jnp.where(old.step >= 200, jnp.nan, metrics.loss))))
    with pytest.raises(errors.NonFiniteError,
                       match=r"^train: codec loss became non-finite at step 200 \(epoch 4\)"):
        train.train_and_evaluate(_smoke_config(), str(tmp_path))
    # Steps 192–255 are the first codec epoch: the three receiver epochs stay saved, nothing more.
    assert Checkpoints(tmp_path).latest_step() == 3
    assert not (tmp_path / "results.json").exists()


def test_non_finite_parameters_behind_a_finite_loss_are_caught(tmp_path, monkeypatch):
    def nan_weights_at_step_255(old, new, metrics):  # the loss stays finite
        params = jax.tree.map(lambda p: jnp.where(old.step == 255, jnp.nan, p), new.params)
        return new.replace(params=params), metrics

    _poison_codec_step(monkeypatch, nan_weights_at_step_255)
    config = _smoke_config()
    config.train.epochs = 2  # steps 192–319; 255 is the last step of the first codec epoch
    with pytest.raises(errors.NonFiniteError,
                       match=r"^train: codec parameters became non-finite at step 255 \(epoch 4\)"):
        train.train_and_evaluate(config, str(tmp_path))
    assert Checkpoints(tmp_path).latest_step() == 3  # nothing non-finite was saved


@pytest.mark.parametrize("dataset,variant", [("mnist", "mnist"), ("cifar10", "cifar")])
def test_train_and_evaluate_on_tfds_mock_data(mock_tfds, tmp_path, dataset, variant):
    if variant == "cifar":
        config = presets.apply_variant(presets.cifar_config(dataset), "smoke")
    else:
        config = _smoke_config()
        config.dataset = dataset
    config.max_train_examples, config.max_test_examples = 64, 32
    config.train.epochs = 1
    config.erasure.edr = 0.1
    state = train.train_and_evaluate(config, str(tmp_path))
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["num_erased"] + results["num_remain"] == 64
    assert results["num_test"] == 32
    chex.assert_tree_all_finite(state.params)
    if variant == "cifar":
        assert jax.tree.leaves(state.batch_stats)  # BatchNorm running averages were kept


def test_checkpoints_every_n_epochs_and_at_phase_ends(tmp_path, monkeypatch):
    config = _smoke_config()
    config.checkpoint_every_epochs = 3
    config.train.epochs, config.train.receiver_epochs = 4, 2  # phases end at epochs 2 and 6
    saved = []
    original_save = Checkpoints.save

    def recording_save(self, step, *args, **kwargs):
        saved.append(step)
        return original_save(self, step, *args, **kwargs)

    monkeypatch.setattr(Checkpoints, "save", recording_save)
    split, system, _ = _setup(config)
    train.fit_with_checkpoints(system, build.recipe_of(config), config, tmp_path,
                               split.train_images, split.train_labels,
                               parallel=build.data_parallel(config), kind="train",
                               image_shape=split.train_images.shape[1:])
    assert saved == [2, 3, 6]


def _stamped(images):
    return np.asarray(images, np.float32) / 255.0


def test_augmentation_keeps_the_trigger_at_its_fixed_position(mock_tfds):
    """The erasure protocol: a crop must not move the trigger off the pixels that define D_e (mock CIFAR-10)."""
    config = presets.apply_variant(presets.cifar_config("cifar10"), "smoke")
    config.max_train_examples, config.erasure.edr = 64, 0.1
    split = build.load_split(config)
    images = jnp.asarray(_stamped(split.train_images))
    triggered = np.asarray(split.train_is_erased)
    mask = trigger_mask(images.shape[1:])
    assert 0 < triggered.sum() < len(triggered)
    plain_kept, kept = [], []
    for seed in range(20):
        key = jax.random.PRNGKey(seed)
        plain = np.asarray(augment.random_crop(key, images))
        fixed = np.asarray(augment.crop_keeping_trigger(key, images))
        kept.append(np.all(fixed[triggered][:, mask] == 1.0))
        plain_kept.append(np.mean(np.all(plain[triggered][:, mask] == 1.0, axis=1)))
        # Outside the trigger, and on every clean image, it is the same crop.
        np.testing.assert_array_equal(fixed[~triggered], plain[~triggered])
        np.testing.assert_array_equal(fixed[:, ~mask], plain[:, ~mask])
    assert all(kept)
    # A plain crop leaves the trigger where it was only when the offset is (4, 4): 1 in 81.
    assert np.mean(plain_kept) < 0.1


def test_crop_once_builds_the_reference_data_sets(mock_tfds):
    """The reference crops each training image once, then stamps the trigger; D_clean is cropped
    in a pass of its own; D_r stays uncropped (the unlearning loop crops it when it reads it)."""
    config = presets.apply_variant(presets.cifar_config("cifar10"), "reference,smoke")
    config.max_train_examples, config.erasure.edr = 64, 0.1
    assert config.train.crop_once and config.unlearning.augment_remain
    cropped = build.load_split(config)
    config.train.augment, config.train.crop_once = False, False
    raw = build.load_split(config)
    mask = trigger_mask(cropped.erased_images.shape[1:])
    assert np.all(cropped.erased_images[:, mask] == 255)
    assert np.all(cropped.train_images[cropped.train_is_erased][:, mask] == 255)
    np.testing.assert_array_equal(cropped.remain_images, raw.remain_images)
    np.testing.assert_array_equal(cropped.remain_indices, raw.remain_indices)  # same D_r and order
    np.testing.assert_array_equal(cropped.train_is_erased, raw.train_is_erased)
    # Cropped: the images moved (mock images are noise, so any shift changes them).
    moved = [not np.array_equal(c[~mask], r[~mask])
             for c, r in zip(cropped.erased_images, raw.erased_images)]
    assert np.mean(moved) > 0.8
    clean_like_erased = [np.array_equal(c[~mask], e[~mask])
                         for c, e in zip(cropped.clean_images, cropped.erased_images)]
    assert np.mean(clean_like_erased) < 0.2  # D_clean's crops are its own


@pytest.mark.parametrize("reset", [False, True])
def test_reset_optimizer_each_epoch(reset):
    config = _smoke_config()
    config.train.receiver_epochs, config.train.epochs = 1, 2
    config.train.reset_optimizer_each_epoch = reset
    split, system, state = _setup(config)
    state, report = train.fit(system, build.recipe_of(config), config, state, split.train_images,
                              split.train_labels, parallel=build.data_parallel(config))
    per_epoch = len(split.train_images) // config.train.batch_size
    counts = {phase: int(optax.tree_utils.tree_get(state.opt_state[phase], "count"))
              for phase in ("receiver", "codec")}
    # Adam's step count restarts with every epoch's fresh state (its bias correction with it).
    assert counts == {"receiver": per_epoch, "codec": per_epoch if reset else 2 * per_epoch}
    assert report.steps == 3 * per_epoch


def test_seeds_trained_together_equal_each_run_alone(tmp_path, monkeypatch):
    """`train_and_evaluate_many` (scu-pipeline's training of its seeds): two seeds as one vmapped
    program per phase give the state, results, checkpoints and curves each gives alone; a
    resumed run trains on alone, and a rerun trains nothing more."""
    configs = []
    for seed in (0, 1):
        config = _smoke_config()
        config.seed, config.checkpoint_every_epochs = seed, 2
        configs.append(config)
    workdirs = [tmp_path / f"seed_{seed}" for seed in (0, 1)]
    saved = {}
    original_save = Checkpoints.save

    def recording_save(self, step, *args, **kwargs):
        saved.setdefault(self.directory.parent.name, []).append(step)
        return original_save(self, step, *args, **kwargs)

    monkeypatch.setattr(Checkpoints, "save", recording_save)
    together = train.train_and_evaluate_many(configs, [str(w) for w in workdirs])
    alone = train.train_and_evaluate(configs[1], str(tmp_path / "alone"))
    chex.assert_trees_all_close(jax.device_get(together[1].params), jax.device_get(alone.params),
                                atol=2e-5)
    assert not all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(together[0].params),
                                                     jax.tree.leaves(alone.params)))
    results = [json.loads((w / "results.json").read_text()) for w in
               (*workdirs, tmp_path / "alone")]
    assert results[1]["runs_together"] == 2 and "runs_together" not in results[2]
    assert results[1]["steps"] == results[2]["steps"] == 7 * 64
    for name in ("accuracy_clean", "backdoor_accuracy", "mse_clean", "mse_erased"):
        assert results[1][name] == pytest.approx(results[2][name], abs=1e-4), name
    # Checkpoints every 2 epochs and at the phase ends (epochs 3 and 7), in each seed's workdir.
    assert saved == {name: [2, 3, 4, 6, 7] for name in ("seed_0", "seed_1", "alone")}
    curves = [read_scalars(w / "summaries" / "train") for w in (workdirs[1], tmp_path / "alone")]
    assert [s for s, _ in curves[0]["codec/epoch/loss"]] == [256, 320, 384, 448]
    np.testing.assert_allclose([v for _, v in curves[0]["codec/epoch/loss"]],
                               [v for _, v in curves[1]["codec/epoch/loss"]], rtol=1e-4)
    # Seed 1 interrupted after epoch 6: it resumes alone, seed 0 is finished; same state.
    shutil.rmtree(workdirs[1] / "checkpoints" / "7")
    again = train.train_and_evaluate_many(configs, [str(w) for w in workdirs])
    chex.assert_trees_all_close(jax.device_get(again[1].params), jax.device_get(alone.params),
                                atol=2e-5)
    rerun = [json.loads((w / "results.json").read_text()) for w in workdirs]
    assert [r.get("runs_together", 1) for r in rerun] == [2, 1]  # seed 0's was trained with seed 1
    assert int(again[0].step) == 7 * 64

"""Forget sets through the real runs: every method on a clean-set system, the stopping rules,
the forget-set metrics and the calibrated membership attack, the binaries and tfds mock data."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from scu_jax import evaluation, passes, presets, stopping
from scu_jax.config import default_config
from scu_jax.errors import CheckpointMismatchError
from scu_jax.data.batching import padded_batches
from scu_jax.methods import erased
from scu_jax.models import to_unit_interval
from scu_jax.runs import build, train, unlearn
from scu_jax.runs.saved import load_variables

REPO = pathlib.Path(__file__).resolve().parent.parent
MNIST = str(REPO / "configs" / "mnist.py")


def _smoke(kind="random", **forget):
    config = presets.apply_variant(default_config(), "smoke")
    config.forget.kind = kind
    config.evaluation.mi_steps = 0
    config.eval_draws, config.evaluation.remain_examples = 2, 256  # a quick read suffices here
    for name, value in forget.items():
        config.forget[name] = value
    return config


@pytest.fixture(scope="module")
def clean_system(tmp_path_factory):
    """A smoke system trained on the clean training set (one serves every forget kind)."""
    workdir = tmp_path_factory.mktemp("forget") / "train"
    train.train_and_evaluate(_smoke(), str(workdir))
    return workdir


def test_training_on_the_clean_set_records_the_data(clean_system):
    results = json.loads((clean_system / "results.json").read_text())
    assert results["num_erased"] == 0 and results["num_remain"] == 1024
    assert {"mse_remain", "accuracy_test"} <= set(results) and "backdoor_accuracy" not in results
    meta = unlearn.Checkpoints(clean_system, read_only=True).saved_config()
    assert meta["training"]["training_set"] == "clean"
    assert meta["data"]["dataset"] == "mnist5k" and meta["data"]["num_train"] == 1024


@pytest.mark.parametrize("method", ["scu", "scu_no_cc", "vbu", "hbu", "salun", "ssd", "l1_sparse",
                                    "finetune", "retrain"])
def test_every_method_runs_on_a_forget_set(clean_system, tmp_path, method):
    config = _smoke("random", fraction=0.05)
    config.unlearning.method = method
    config.unlearning.max_epochs = 2
    config.unlearning.ssd_alpha = 10.0  # selects some of the smoke system's parameters
    results = unlearn.unlearn_and_evaluate(config, str(clean_system), str(tmp_path / method))
    assert results["kind"] == "random" and results["num_erased"] == 51
    assert results["num_remain"] == 1024 - 51
    for name in ("erased", "remain", "test", "heldout"):
        assert np.isfinite(results[f"mse_{name}"]) and 0 <= results[f"accuracy_{name}"] <= 1
    assert results["erased_to_heldout"] == pytest.approx(results["mse_erased"]
                                                         / results["mse_heldout"])
    assert 0 <= results["mia_auc"] <= 1 and "backdoor_accuracy" not in results
    assert len(results["forget_sha256"]) == 64
    if method in ("finetune", "l1_sparse", "retrain"):
        assert results["stopped_by"] == "epochs" and results["stop_rule"].startswith("fixed")
    elif method == "ssd":
        assert results["stopped_by"] == "one_pass" and results["epochs"] == 1
        assert results["stop_rule"] == "one pass: SSD, α = 10, λ = 1"
        assert results["ssd_dampened"] > 0  # 51 random images: some parameters are theirs
        assert results["steps"] == 51 // 16 + 1024 // 16  # D_e's batches and D's
    else:
        assert results["stopped_by"] in ("gap", "max_epochs")
        assert results["stop_rule"].startswith("gap:") and results["epochs"] <= 2
        assert all("gap_closed" in epoch for epoch in results["history"])


def test_independent_requests_run_as_one_program_each_with_its_result_alone(clean_system,
                                                                              tmp_path):
    """Two random requests' SCU runs as one vmapped program (`unlearn_and_evaluate_many`, as
    scu-pipeline runs its seeds): each result is the one its run alone gives, and a rerun
    reuses both."""
    configs = []
    for seed in (0, 1):
        config = _smoke("random", fraction=0.05, seed=seed)
        config.unlearning.method, config.unlearning.max_epochs = "scu", 3
        configs.append(config)
    workdirs = [str(tmp_path / f"together_{seed}") for seed in (0, 1)]
    together = unlearn.unlearn_and_evaluate_many(configs, [str(clean_system)] * 2, workdirs)
    alone = unlearn.unlearn_and_evaluate(configs[1], str(clean_system), str(tmp_path / "alone"))
    assert together[0]["forget_sha256"] != together[1]["forget_sha256"] == alone["forget_sha256"]
    assert together[1]["runs_together"] == 2 and "runs_together" not in alone
    for key in ("epochs", "steps", "stopped_by"):
        assert together[1][key] == alone[key], key
    for key in ("mse_erased", "mse_heldout", "accuracy_erased", "accuracy_test", "mia_auc"):
        assert together[1][key] == pytest.approx(alone[key], rel=1e-4, abs=1e-6), key
    again = unlearn.unlearn_and_evaluate_many(configs, [str(clean_system)] * 2, workdirs)
    assert [r["mse_erased"] for r in again] == [r["mse_erased"] for r in together]


def test_the_class_rule_and_a_changed_forget_set_is_another_result(clean_system, tmp_path):
    config = _smoke("class", class_id=3)
    config.unlearning.method = "scu"
    config.unlearning.class_stop = 1.0  # any recognition rate is below it: stops after epoch 1
    results = unlearn.unlearn_and_evaluate(config, str(clean_system), str(tmp_path / "scu"))
    assert results["stopped_by"] == "class" and results["epochs"] == 1
    assert results["num_heldout"] == int((build.load_split(config).test_labels == 3).sum())
    assert 0 <= results["history"][0]["erased_accuracy"] <= 1
    # The same workdir for another class is another result: refused, not silently reused.
    config.forget.class_id = 4
    with pytest.raises(CheckpointMismatchError, match="another method or configuration"):
        unlearn.unlearn_and_evaluate(config, str(clean_system), str(tmp_path / "scu"))


def test_gap_rule_reads_zero_for_the_original_and_stops_at_its_threshold(clean_system):
    config = _smoke("random", fraction=0.1)
    split, system, image_shape = build.build_for(config)
    params, batch_stats, _ = load_variables(clean_system, system, config, image_shape)
    protocol = build.protocol_of(config)
    stop_data = stopping.gap_stop_data(system, params, batch_stats, split, protocol,
                                         jax.random.PRNGKey(3))
    *_, (e_o, h_o, gap) = stop_data
    assert float(gap) >= 1 + stopping.MIN_GAP and float(e_o) > 0 and float(h_o) > 0
    # The original against itself has risen by nothing.
    closed = jax.jit(stopping.gap_closed, static_argnums=0)(system, params, batch_stats,
                                                              stop_data)
    assert abs(float(closed)) < 1e-5
    phase = erased.unlearning_phase(build.method_of(config, system), seed=0, num_erased=10,
                                    num_remain=100, batch_size=5, max_epochs=3, rule="gap",
                                    gap_tolerance=0.1, evaluate=lambda state, data: 0.0)
    assert phase.batch_stop is None and phase.evaluation_name == "gap_closed"
    assert not phase.stop({"gap_closed": 0.89}) and phase.stop({"gap_closed": 0.9})
    with pytest.raises(ValueError, match="needs an evaluate function"):
        erased.unlearning_phase(build.method_of(config, system), seed=0, num_erased=10,
                                num_remain=100, batch_size=5, max_epochs=3, rule="gap")


def test_stopping_reads_each_image_through_the_encoder_once_with_a_full_passs_draws(
        clean_system):
    """`target_rate` and `masked_mean_sse` encode each image once, then sample, send and decode
    every draw: the numbers a pass over the repeated images makes with the same keys."""
    config = _smoke("random", fraction=0.1)
    config.eval_draws, config.eval_batch_size = 3, 64  # batches that straddle the repeats
    split, system, image_shape = build.build_for(config)
    params, batch_stats, _ = load_variables(clean_system, system, config, image_shape)
    protocol, key = build.protocol_of(config), jax.random.PRNGKey(5)
    images = split.erased_images
    draws = stopping.draws_of(images, protocol)
    assert draws.rows.shape[1] == 64 and int(draws.mask.sum()) == 3 * len(images)
    # What the stopping rules read before: the set repeated, then cut into padded batches.
    indices, mask = padded_batches(3 * len(images), 64)
    hits, errors = [], []
    for index, batch in enumerate(np.tile(images, (3, 1, 1, 1))[indices]):
        x = to_unit_interval(batch)
        out, logits = passes.evaluation_pass(system, params, batch_stats, x,
                                             jax.random.fold_in(key, index))
        hits.append(np.asarray(logits.argmax(-1) == 2))
        errors.append(np.asarray(((out.x_hat - x) ** 2).reshape(len(x), -1).sum(-1)))
    mask = mask.astype(bool)
    rate = jax.jit(stopping.target_rate, static_argnums=(0, 4))(system, params, batch_stats,
                                                                 draws, 2, key)
    sse = jax.jit(stopping.masked_mean_sse, static_argnums=0)(system, params, batch_stats,
                                                               draws, key)
    assert float(rate) == pytest.approx(np.asarray(hits)[mask].mean(), abs=1e-7)
    assert float(sse) == pytest.approx(np.asarray(errors)[mask].mean(), rel=1e-5)
    # Read against a threshold, the batches stop once the rule's answer is known: the same
    # answer, the exact rate below the threshold, a rate of the batches read at or above it.
    rate = float(rate)
    assert 0.05 < rate < 0.95
    for threshold in (0.02, rate / 2, rate + 0.01, 1.0):
        early = float(jax.jit(stopping.target_rate, static_argnums=(0, 4, 6))(
            system, params, batch_stats, draws, 2, key, threshold))
        assert (early < threshold) == (rate < threshold)
        assert early == pytest.approx(rate, abs=1e-7) if rate < threshold else early >= threshold


def test_calibrated_attack_is_exactly_chance_against_itself_and_reads_the_reference(clean_system):
    config = _smoke("random", fraction=0.1)
    split, system, image_shape = build.build_for(config)
    params, batch_stats, _ = load_variables(clean_system, system, config, image_shape)
    protocol = build.protocol_of(config)
    assert evaluation.membership_inference_auc(system, params, batch_stats, split, protocol,
                                               (params, batch_stats)) == 0.5
    members, outsiders = evaluation.membership_scores(system, params, batch_stats, split, protocol)
    assert len(members) == 102 and len(outsiders) == len(split.test_labels)
    # The calibrated score is SSE_reference − SSE_system, each averaged over the same draws.
    other = jax.tree.map(lambda p: p * 0.9, params)
    m, o = evaluation.membership_scores(system, params, batch_stats, split, protocol,
                                        (other, batch_stats))
    key = jax.random.fold_in(jax.random.PRNGKey(protocol.seed), 70)
    for index, (scores, images) in enumerate(((m, split.erased_images),
                                              (o, evaluation.heldout_set(split)[0]))):
        set_key = jax.random.fold_in(key, index)
        expected = (evaluation.mean_sse(system, other, batch_stats, images, protocol, set_key, 2)
                    - evaluation.mean_sse(system, params, batch_stats, images, protocol, set_key,
                                          2))
        np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-4)
    # Members whose reference error exceeds theirs by more than any non-member's: AUC 1.
    assert evaluation.roc_auc(o.max() + 1 + np.arange(3.0), o) == 1.0
    assert evaluation.roc_auc(o, o) == 0.5


def test_retraining_progress_and_references_belong_to_one_forget_set(clean_system, tmp_path):
    config = _smoke("random", fraction=0.05)
    config.unlearning.method = "retrain"
    first = tmp_path / "retrain"
    unlearn.unlearn_and_evaluate(config, str(clean_system), str(first))
    # What an interrupted retraining leaves: its progress, no result.
    import shutil
    shutil.rmtree(first / "checkpoints")
    other = config.copy_and_resolve_references()
    other.forget.fraction = 0.1
    with pytest.raises(CheckpointMismatchError, match="interrupted retraining of another forget"):
        unlearn.unlearn_and_evaluate(other, str(clean_system), str(first))
    # A reference retrained on another forget set is refused, not silently read.
    again = tmp_path / "again"
    unlearn.unlearn_and_evaluate(config, str(clean_system), str(again))
    other.unlearning.method, other.unlearning.max_epochs = "scu", 1
    with pytest.raises(CheckpointMismatchError, match="retrained on another forget set"):
        unlearn.unlearn_and_evaluate(other, str(clean_system), str(tmp_path / "scu"),
                                     reference_workdir=str(again))
    # The trained clean-set system evaluates alone (its training set; no forget set named).
    from scu_jax.runs.evaluate import evaluate_workdir
    results = evaluate_workdir(str(clean_system))
    assert results["num_erased"] == 0 and results["kind"] == "train"


def test_a_request_against_another_training_split_is_refused(clean_system):
    split = build.load_split(_smoke("random", fraction=0.1))
    meta = unlearn.Checkpoints(clean_system, read_only=True).saved_config()
    unlearn.check_same_data(meta, split, "here")  # the same data passes
    other = dict(meta, data=dict(meta["data"], sha256="0" * 64))
    with pytest.raises(CheckpointMismatchError, match=r"sample indices would name other images"):
        unlearn.check_same_data(other, split, "here")


def _binary(name, *args):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", f"scu_jax.binaries.{name}", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.slow
def test_binaries_run_an_ids_request_and_refuse_bad_request_files(clean_system, tmp_path):
    request = tmp_path / "user-17.txt"
    request.write_text("# user 17\n3\n14\n15\n92\n65\n35\n89\n79\n")
    common = [f"--config={MNIST}:smoke", "--config.forget.kind=ids",
              "--config.evaluation.mi_steps=0", f"--init_workdir={clean_system}"]
    result = _binary("unlearn", *common, f"--config.forget.ids_file={request}",
                     f"--workdir={tmp_path / 'out'}")
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["kind"] == "ids" and results["num_erased"] == 8
    # The class and random kinds differ from this by their config alone: they run in process
    # (test_every_method_runs_on_a_forget_set, test_forget_kinds_on_tfds_mock_data).
    # Every kind of bad file is refused by the library (forget_sets_test); here, that the binary
    # turns it into one line and exit 2 before any work.
    for content, message in (("3\n1024\n", "index 1024 is out of range"),
                             ("3\nx\n", "line 2: 'x' is not a sample index")):
        request.write_text(content)
        result = _binary("unlearn", *common, f"--config.forget.ids_file={request}",
                         f"--workdir={tmp_path / 'bad'}")
        last = result.stderr.strip().splitlines()[-1]
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert last.startswith("scu-unlearn: error:") and message in last, last
        assert not (tmp_path / "bad").exists()  # refused before any work


@pytest.mark.parametrize("dataset, kind", [("mnist", "class"), ("cifar10", "random")])
def test_forget_kinds_on_tfds_mock_data(mock_tfds, tmp_path, dataset, kind):
    # The MLP codec on CIFAR-shaped data: the ResNet's path is the backdoor tests'.
    config = _smoke(kind, class_id=1, fraction=0.25)
    config.dataset = dataset
    config.max_train_examples, config.max_test_examples = 64, 32
    config.train.epochs, config.evaluation.mi_steps, config.eval_batch_size = 1, 0, 32
    train.train_and_evaluate(config, str(tmp_path / "train"))
    config.unlearning.method, config.unlearning.max_epochs = "scu", 1
    results = unlearn.unlearn_and_evaluate(config, str(tmp_path / "train"), str(tmp_path / "scu"))
    split = build.load_split(config)
    assert results["num_erased"] == len(split.erased_indices) > 0
    assert results["num_erased"] + results["num_remain"] == 64
    assert np.isfinite(results["mse_erased"]) and results["steps"] >= 1

"""Corrective unlearning: the known fraction's split, finding the rest of D_e, erasing it too."""

import json

import numpy as np
import pytest

from scu_jax import config as config_lib
from scu_jax import data, expansion, presets
from scu_jax.runs import train, unlearn
from scu_jax.runs.checkpointing import Checkpoints


@pytest.fixture(scope="module")
def mnist5k():
    return data.load_dataset("mnist5k")


def test_like_known_joins_the_candidates_of_the_known_cluster():
    rng = np.random.default_rng(0)
    poisoned, clean = rng.normal(4.0, 1.0, (60, 8)), rng.normal(0.0, 1.0, (300, 8))
    known = rng.normal(4.0, 1.0, (6, 8))  # a tenth of the poisoned set is known
    flags = expansion.like_known(known, np.concatenate([clean, poisoned]))
    assert flags[300:].all() and not flags[:300].any()
    # Nothing left to find: every candidate is clean, and the known rows hold their cluster.
    assert expansion.like_known(rng.normal(4.0, 1.0, (60, 8)), clean).sum() <= 3
    assert expansion.like_known(known, np.zeros((0, 8))).shape == (0,)
    with pytest.raises(ValueError, match="at least one known sample"):
        expansion.like_known(np.zeros((0, 8)), clean)


def test_move_to_erased_makes_the_full_split_from_the_known_part(mnist5k):
    args = dict(edr=0.06, base_class=1, target_class=2, seed=0)
    full = data.make_erasure_split(mnist5k, **args)
    part = data.make_erasure_split(mnist5k, **args, known_fraction=0.25)
    for split in (full, part):  # each D_r sample's training row holds it
        np.testing.assert_array_equal(split.train_images[split.remain_rows], split.remain_images)
        np.testing.assert_array_equal(split.train_labels[split.remain_rows], split.remain_labels)
    unknown = np.isin(part.remain_indices, part.unknown_indices) & (part.remain_labels == 2)
    moved = data.move_to_erased(part, unknown)
    assert moved.num_flagged == 180 and part.num_flagged == 0
    assert (moved.num_known, part.num_known) == (60, 60)
    np.testing.assert_array_equal(np.sort(moved.erased_indices), full.erased_indices)
    np.testing.assert_array_equal(moved.train_is_erased, full.train_is_erased)
    assert sorted(moved.remain_indices.tolist()) == sorted(full.remain_indices.tolist())
    assert (moved.erased_labels == 2).all() and (moved.erased_images[:, 24:26, 24:26] == 255).all()
    np.testing.assert_array_equal(moved.unknown_indices, part.unknown_indices)  # the truth stays
    with pytest.raises(ValueError, match=r"one bool per D_r sample \(3940\)"):
        data.move_to_erased(part, unknown[:10])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    config = presets.apply_variant(config_lib.default_config(), "smoke")
    config.evaluation.mi_steps = 0
    workdir = tmp_path_factory.mktemp("expansion") / "train"
    train.train_and_evaluate(config, str(workdir))
    return config, workdir


@pytest.mark.slow
def test_expand_finds_the_unknown_poison_and_the_results_read_the_truth(trained, tmp_path):
    config, workdir = trained
    config = config.copy_and_resolve_references()
    config.unlearning.method, config.forget.known_fraction = "finetune", 0.25
    config.forget.expand = True
    results = unlearn.unlearn_and_evaluate(config, str(workdir), str(tmp_path / "run"))
    # Read on the known part and the rest, as without expanding: 15 of the smoke set's 61 known.
    assert results["num_erased"] == 15 and results["num_unknown"] == 46
    assert results["flagged_unknown"] <= results["flagged"]
    assert results["flagged_recall"] == results["flagged_unknown"] / 46 >= 0.8
    saved = Checkpoints(tmp_path / "run", read_only=True).saved_config()
    forget = saved["unlearning_fingerprint"]["forget"]
    assert forget["flagged"] == results["flagged"] and forget["known_fraction"] == 0.25
    # A rerun finds the same set and reuses the result; the unexpanded run is another one.
    again = unlearn.unlearn_and_evaluate(config, str(workdir), str(tmp_path / "run"))
    assert again["model_sha256"] == results["model_sha256"]
    config.forget.expand = False
    with pytest.raises(Exception, match="another method or configuration"):
        unlearn.unlearn_and_evaluate(config, str(workdir), str(tmp_path / "run"))
    assert json.loads((tmp_path / "run" / "results.json").read_text())["flagged"] > 0

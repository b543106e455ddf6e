"""Worst-case forget sets: the budget projection, the bi-level search, the cached request file."""

import json
import pathlib
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from scu_jax import worst_case
from scu_jax.config import config_from_json
from scu_jax.data.forget import read_ids
from scu_jax.errors import ConfigError
from scu_jax.runs import worst_case as runs_worst_case
from scu_jax.runs.build import build_for, load_split
from scu_jax.runs.checkpointing import Checkpoints
from scu_jax.runs.saved import load_variables
from scu_jax.runs.worst_case import set_size, worst_case_request

from forget_test import made, trained  # noqa: F401  (the clean smoke system, made once a run)


def test_the_projection_keeps_weights_in_the_box_with_the_budget():
    rng = np.random.default_rng(0)
    for count in (1.0, 7.0, 30.0):
        w = np.asarray(worst_case.project_to_budget(jnp.asarray(rng.normal(0.2, 1.0, 50)), count))
        assert w.min() >= 0.0 and w.max() <= 1.0 and w.sum() == pytest.approx(count, abs=1e-4)
    feasible = jnp.asarray(np.full(10, 0.3))
    np.testing.assert_allclose(worst_case.project_to_budget(feasible, 3.0), feasible, atol=1e-5)


@pytest.fixture(scope="module")
def system_of(trained):
    config = config_from_json(Checkpoints(trained, read_only=True).saved_config()["config"])
    split, system, shape = build_for(config, training=True)
    params, batch_stats, _ = load_variables(str(trained), system, config, shape)
    return system, params, batch_stats, split


def test_the_request_is_seeded_of_size_k_cached_and_harder_than_random(trained, system_of,
                                                                        tmp_path, monkeypatch):
    system, params, batch_stats, split = system_of
    init = tmp_path / "trained"  # the kind caches the set in the trained workdir: a copy
    shutil.copytree(trained, init)
    monkeypatch.setitem(runs_worst_case.SEARCH_DEFAULTS, "iterations", 6)  # a shorter search
    config = config_from_json(Checkpoints(init, read_only=True).saved_config()["config"])
    config.forget.kind, config.forget.fraction = "worst_case", 0.01
    with pytest.raises(ConfigError, match="forget.kind='worst_case' is found against the trained"):
        load_split(config)  # not resolved: no set named yet
    resolved = runs_worst_case.resolve_worst_case(config, init)  # the search
    assert config.forget.ids_file == "" and resolved.forget.ids_file  # a copy, naming the file
    first = worst_case_request(init, 0.01, cache_dir=init / "worst_case")
    assert first["path"] == resolved.forget.ids_file and first["cached"]
    assert first["count"] == 10 == len(first["ids"])  # 1 % of 1,024
    ids = np.asarray(first["ids"])
    assert (np.diff(ids) > 0).all() and ids.min() >= 0 and ids.max() < 1024
    assert read_ids(first["path"], 1024).tolist() == first["ids"]  # a request file as users write
    assert first["hardness"][-1] < first["hardness"][0]
    again = worst_case_request(init, 10, cache_dir=init / "worst_case")
    assert again["cached"] and again["ids"] == first["ids"] and again["path"] == first["path"]
    loaded = load_split(resolved)  # what scu-unlearn and scu-pipeline then erase
    assert loaded.kind == "worst_case" and loaded.erased_indices.tolist() == first["ids"]
    assert len(loaded.remain_labels) == 1024 - 10
    plain = config.copy_and_resolve_references()
    plain.forget.kind = "random"
    assert runs_worst_case.resolve_worst_case(plain, init) is plain  # other kinds pass through
    # The file's name is the digest of every input the set depends on (another seed, size or
    # model is another file).
    inputs = json.loads(pathlib.Path(first["path"]).with_suffix(".json").read_text())["inputs"]
    assert inputs["model_sha256"] == Checkpoints(trained, read_only=True).model_digest()
    assert {k: inputs[k] for k in ("method", "count", "seed", "iterations")} == {
        "method": "scu", "count": 10, "seed": 0, "iterations": 6}
    # The set it found loses less to unlearning than random sets of its size do.
    hardest = worst_case.set_hardness(system, params, batch_stats, split.train_images, ids)
    randoms = [worst_case.set_hardness(system, params, batch_stats, split.train_images,
                                       worst_case.random_set(1024, 10, seed)) for seed in range(3)]
    assert hardest < min(randoms)  # 0.064 against 0.085 to 0.129 when measured


def test_bad_requests_are_refused_before_any_search(trained, tmp_path):
    for size in (0, 1024, 1.5, 1e-5):
        with pytest.raises(ValueError, match="worst-case set size"):
            set_size(size, 1024)
    assert (set_size(0.01, 1024), set_size(3, 1024)) == (10, 3)
    with pytest.raises(ValueError, match="worst-case method 'magic'"):
        worst_case_request(trained, 5, cache_dir=tmp_path, method="magic")
    with pytest.raises(ValueError, match="unknown worst-case search setting"):
        worst_case_request(trained, 5, cache_dir=tmp_path, iterationz=3)
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        worst_case_request(tmp_path / "nothing", 5, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="must be one of"):
        worst_case.worst_case_set(None, {}, {}, np.zeros((4, 28, 28, 1)), 1, method="magic")
    with pytest.raises(ValueError, match="fewer than the candidates"):
        worst_case.worst_case_set(None, {}, {}, np.zeros((4, 28, 28, 1)), 4)
    assert list(tmp_path.iterdir()) == []  # nothing written


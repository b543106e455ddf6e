"""Sharded, sliced training and exact deletion (`scu_jax.sharding`, `runs/sharded.py`)."""

import json
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scu_jax
from scu_jax import sharding
from scu_jax.errors import CheckpointMismatchError, ConfigError
from scu_jax.models import apply_receiver, to_unit_interval
from scu_jax.runs import sharded, sharded_requests
from scu_jax.runs.checkpointing import tree_digest
from scu_jax.runs.train import train_and_evaluate

from conftest import made_once, said
from forget_test import REPO, SMOKE, _env, _write

COUNT, SLICES = 3, 2


def _config(**shards):
    from configs.mnist import get_config

    config = get_config("smoke")
    config.forget.kind = "ids"  # the clean training set
    config.max_train_examples, config.max_test_examples = 384, 128
    config.train.receiver_epochs, config.train.epochs = 1, 2
    config.shards.count, config.shards.slices = COUNT, SLICES
    for field, value in shards.items():
        config.shards[field] = value
    return config


def _train(root: pathlib.Path) -> dict:
    return sharded.train_sharded(_config(), str(root / "system"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Made once per test run; tests that write work on a copy."""
    root, results = made_once(tmp_path_factory, "sharded", _train)
    return root / "system", results


def _params(job, workdir):
    return sharded.load_shards(job, pathlib.Path(workdir), sharded.read_manifest(workdir)["shards"])


def _one(tree, index):
    return jax.tree.map(lambda a: a[index], tree)


def test_shards_and_slices_are_disjoint_stratified_and_seeded():
    labels = np.random.default_rng(0).integers(0, 10, 1000)
    shard, slice_ = sharding.assign_shards(labels, 4, 3, seed=1)
    assert shard.min() == 0 and shard.max() == 3 and slice_.max() == 2
    for k in range(4):
        mine = shard == k
        assert abs(mine.sum() - 250) <= 10  # one sample a class at most
        for label in range(10):  # every class in proportion (dealt round the shards)
            assert abs((labels[mine] == label).sum() - (labels == label).sum() / 4) <= 1
        assert np.ptp(np.bincount(slice_[mine])) <= 10
    again = sharding.assign_shards(labels, 4, 3, seed=1)
    other = sharding.assign_shards(labels, 4, 3, seed=2)
    assert np.array_equal(again[0], shard) and not np.array_equal(other[0], shard)
    rows = sharding.stage_rows(shard, slice_, 1, 2, excluded=[int(np.flatnonzero(shard == 1)[0])])
    assert set(np.unique(shard[rows])) == {1} and set(np.unique(slice_[rows])) == {0, 1}
    assert len(rows) == ((shard == 1) & (slice_ < 2)).sum() - 1
    assert [sharding.stage_epochs(300, r) for r in (1, 2, 4, 8)] == [300, 200, 120, 67]
    assert sharding.stage_epochs(0, 4) == 0 and sharding.index_bits(8) == 3
    assert sharding.chain_digest("a", rows) != sharding.chain_digest("b", rows)


def test_training_writes_every_stage_and_an_aggregated_evaluation(trained):
    workdir, results = trained
    manifest = sharded.read_manifest(workdir)
    assert (manifest["count"], manifest["slices"], manifest["excluded"]) == (COUNT, SLICES, [])
    assert len(manifest["shards"]) == COUNT and all(len(c) == SLICES for c in manifest["shards"])
    for chain in manifest["shards"]:
        for stage, digest in enumerate(chain, 1):
            assert (workdir / sharded.STORE / digest / str(stage)).is_dir()
    assert results["shards"] == COUNT and results["index_bits"] == 2
    assert results["aggregation"] == "best" and 0.0 <= results["accuracy_test"] <= 1.0
    assert 0.0 < results["mse_test"] < 784.0  # a sum over 784 pixels in [0, 1]
    # Stage r reads r/R of the shard: 128 rows a shard, 64 a slice, 4 + 8 steps an epoch, and
    # one receiver and one codec epoch a stage (2E/(R + 1) of 1 and 2).
    assert results["stage_epochs"] == [1, 1] and results["steps"] == COUNT * (4 + 8) * 2


def test_a_deletion_retrains_only_what_saw_the_samples_and_equals_training_without_them(
        trained, tmp_path):
    """Also: the record is a hash chain that `verify_sharded` checks with the store."""
    workdir = tmp_path / "deployment"
    shutil.copytree(trained[0], workdir)
    job = sharded.setup(_config())
    before = sharded.read_manifest(workdir)["shards"]
    params_before = _params(job, workdir)
    # One sample of shard 0's second slice, one of shard 1's first.
    ids = [int(np.flatnonzero((job.shard == 0) & (job.slice_ == 1))[3]),
           int(np.flatnonzero((job.shard == 1) & (job.slice_ == 0))[5])]
    record = sharded_requests.delete_from_sharded(str(workdir), ids, request_id="r1")
    after = sharded.read_manifest(workdir)
    assert record["shards_retrained"] == [0, 1]
    assert record["stages_retrained"] == {"1": [1], "2": [0, 1]}
    assert record["earliest_slice"] == {"0": 2, "1": 1} and len(record["new_checkpoints"]) == 3
    assert after["excluded"] == sorted(ids) and after["requests"][-1]["request_id"] == "r1"
    assert after["shards"][2] == before[2] and after["shards"][0][0] == before[0][0]
    params_after = _params(job, workdir)
    assert tree_digest(_one(params_after, 2)) == tree_digest(_one(params_before, 2))  # untouched
    assert tree_digest(_one(params_after, 0)) != tree_digest(_one(params_before, 0))
    # What saw an erased sample is gone from the store; what did not is kept.
    store = {p.name for p in (workdir / sharded.STORE).iterdir()}
    assert store == {d for chain in after["shards"] for d in chain}
    # Exact: bit for bit what training from scratch without the samples gives.
    scratch = tmp_path / "scratch"
    sharded.train_sharded(_config(), str(scratch), excluded=ids)
    assert sharded.read_manifest(scratch)["shards"] == after["shards"]
    assert tree_digest(_params(job, scratch)) == tree_digest(params_after)
    # A later request on a shard already retrained builds on its new checkpoints.
    third = [int(np.flatnonzero((job.shard == 1) & (job.slice_ == 1))[0])]
    record = sharded_requests.delete_from_sharded(str(workdir), third, request_id="r2")
    latest = sharded.read_manifest(workdir)
    assert record["stages_retrained"] == {"2": [1]}
    assert latest["shards"][1][0] == after["shards"][1][0]
    assert latest["shards"][1][1] not in {d for chain in after["shards"] for d in chain}
    sharded.train_sharded(_config(), str(scratch), excluded=ids + third)  # resumes: one stage
    assert (tree_digest(_one(_params(job, scratch), 1))
            == tree_digest(_one(_params(job, workdir), 1)))
    _the_record_is_a_hash_chain_that_verify_checks_with_the_store(workdir)


def _the_record_is_a_hash_chain_that_verify_checks_with_the_store(workdir: pathlib.Path):
    summary = sharded_requests.verify_sharded(workdir)
    manifest = sharded.read_manifest(workdir)
    assert (summary["requests"], summary["erased"]) == (2, 3)
    assert summary["head"] == manifest["head"] == manifest["requests"][-1]["sha256"]
    assert manifest["requests"][1]["previous_sha256"] == manifest["requests"][0]["sha256"]
    path = workdir / sharded.MANIFEST
    pristine = path.read_text()

    def tampered(change, message):
        edited = json.loads(pristine)
        change(edited)
        path.write_text(json.dumps(edited))
        with pytest.raises(scu_jax.LedgerMismatchError, match=message):
            sharded_requests.verify_sharded(workdir)
        path.write_text(pristine)

    tampered(lambda m: m["requests"][0].update(request_id="mallory"), "request 1 .* not the one")
    tampered(lambda m: m["requests"].reverse(), "not the one the chain recorded")
    tampered(lambda m: m["requests"].pop(), "its head is not its last request's")
    tampered(lambda m: m.update(excluded=manifest["excluded"][:1]),
             "the erased samples are not the requests'")
    tampered(lambda m: m["shards"][2].reverse(), "checkpoint names are not those")
    stray = workdir / sharded.STORE / ("0" * 64)
    shutil.copytree(workdir / sharded.STORE / manifest["shards"][0][0], stray)
    with pytest.raises(scu_jax.LedgerMismatchError,
                       match="1 checkpoint\\(s\\) outside the chains"):
        sharded_requests.verify_sharded(workdir)


def test_the_sender_picks_the_best_shard_and_the_receivers_vote(trained):
    workdir, _ = trained
    job = sharded.setup(_config())
    params, stats = jax.tree.map(jnp.asarray, _params(job, workdir))
    images = jnp.asarray(job.split.test_images[:32])
    key = jax.random.PRNGKey(0)
    # Shard 1's decoder zeroed: its reconstructions are blank, the sender never picks it.
    broken = jax.tree_util.tree_map_with_path(
        lambda path, a: a.at[1].set(0.0) if "decoder" in jax.tree_util.keystr(path) else a,
        params)
    # (per_sample_metrics keys its first batch fold_in(key, 0).)
    out = sharding.sharded_forward(job.system, broken, stats, images, jax.random.fold_in(key, 0))
    assert set(np.unique(out["shard"]).tolist()) <= {0, 2}
    alone = scu_jax.passes.per_sample_metrics(job.system, _one(params, 0), _one(stats, 0),
                                              np.asarray(images), batch_size=32, key=key)
    chosen = np.asarray(out["shard"]) == 0
    np.testing.assert_allclose(np.asarray(out["sse"])[chosen], alone["sse"][chosen], rtol=1e-5)
    assert np.array_equal(np.asarray(out["prediction"])[chosen], alone["prediction"][chosen])
    # Three receivers, two of them the same: the vote is theirs.
    twin = jax.tree.map(lambda a: a.at[2].set(a[0]), params)
    twin_stats = jax.tree.map(lambda a: a.at[2].set(a[0]), stats)
    voted = sharding.sharded_forward(job.system, twin, twin_stats, images, key, aggregation="vote")
    logits = apply_receiver(job.system, _one(twin, 0), _one(twin_stats, 0),
                            to_unit_interval(images))[0]
    assert np.array_equal(voted["input_prediction"], jnp.argmax(logits, -1))
    with pytest.raises(ValueError, match="aggregation must be one of best, vote"):
        sharding.sharded_forward(job.system, params, stats, images, key, aggregation="mean")


def test_bad_sharded_values_are_one_line_errors_before_any_work(trained, tmp_path):
    for shards, message in (({"count": 0}, "shards.count=0"), ({"slices": 0}, "shards.slices=0"),
                            ({"aggregation": "mean"}, "shards.aggregation"),
                            ({"count": 12, "slices": 4}, "12 shards × 4 slices of 384 training "
                                                          "images leave 8 a slice")):
        with pytest.raises(ConfigError, match=message):
            sharded.train_sharded(_config(**shards), str(tmp_path / "never"))
    assert not (tmp_path / "never").exists()
    with pytest.raises(CheckpointMismatchError, match="another configuration"):
        sharded.train_sharded(_config(aggregation="vote", count=2), str(trained[0]))
    # A sharded system and a single one never overwrite each other's workdir.
    with pytest.raises(CheckpointMismatchError, match="holds a sharded system"):
        train_and_evaluate(_config(count=1), str(trained[0]))
    single = tmp_path / "single"
    (single / "checkpoints").mkdir(parents=True)
    with pytest.raises(CheckpointMismatchError, match="holds a single system"):
        sharded.train_sharded(_config(), str(single))
    assert [p.name for p in single.iterdir()] == ["checkpoints"]
    # The binaries: a sharded request on a plain system, another method on a sharded one.
    plain = tmp_path / "plain"
    plain.mkdir()
    ids = _write(tmp_path / "ids.txt", [3, 4])
    for args, message in (
            ((f"--deployment={plain}", f"--ids={ids}", "--method=sisa"),
             "--method=sisa deletes from a sharded system"),
            ((f"--deployment={trained[0]}", f"--ids={ids}", "--method=vbu"),
             "--method=vbu: a sharded deployment deletes exactly")):
        result = subprocess.run([sys.executable, "-m", "scu_jax.binaries.forget", *args],
                                cwd=REPO, capture_output=True, text=True, timeout=120, env=_env())
        lines = said(result.stderr)
        assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
        assert lines[0].startswith(f"scu-forget: error: {message}")
    assert sharded.read_manifest(trained[0])["excluded"] == []  # nothing done


def test_the_benchmark_refuses_bad_flags_in_one_line():
    from benchmarks import sharded as bench

    assert bench.check_arguments(["2", "8"], 4, ["0", "1"], 10) == ([2, 8], [0, 1])
    for arguments, message in ((([1], 4, [0], 10), "each S must be at least 2"),
                               ((["x"], 4, [0], 10), "comma-separated integers"),
                               (([2], 0, [0], 10), "--sharded_slices must be at least 1"),
                               (([2], 4, [0], 0), "--sharded_requests must be at least 1")):
        with pytest.raises(ValueError, match=message):
            bench.check_arguments(*arguments)


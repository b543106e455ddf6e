"""scu_jax.population (per-sample outcomes, KLOM, the noise floor) and benchmarks.population's
arguments, report and table on a tiny mock (no training: the benchmark itself trains 48 codecs)."""

import importlib.util
import os
import pathlib
import subprocess
import sys
import types

import jax
import numpy as np
import pytest

from scu_jax import population
from scu_jax.passes import Protocol, mean_sse

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def api_names():
    """The names every API example may use (scripts/docs.py's SETUP, as tests/docs_test.py
    makes them): the MNIST system, a fresh state, 16 images and labels, a key."""
    spec = importlib.util.spec_from_file_location("scu_docs", ROOT / "scripts" / "docs.py")
    docs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(docs)
    names = {}
    exec(docs.SETUP, names)  # pylint: disable=exec-used
    return docs, names


def _images(count):
    return np.random.default_rng(0).integers(0, 256, (count, 28, 28, 1), dtype=np.uint8)


def test_the_margin_is_the_labels_logit_minus_the_largest_other():
    logits = np.array([[1.0, 3.0, 2.0], [5.0, 5.0, 0.0]])
    # Row 0: label 1 leads by 3 − 2; label 0 trails the largest other by 1 − 3. Row 1: a tie.
    assert population.correct_class_margin(logits, np.array([1, 0])).tolist() == [1.0, 0.0]
    assert population.correct_class_margin(logits[:1], np.array([0])).tolist() == [-2.0]


def test_per_sample_outcomes_read_a_hand_made_receiver_and_the_mean_sse(api_names):
    system, state = api_names[1]["system"], api_names[1]["state"]
    # A receiver that says the same whatever x̂: zero weights, output bias k for class k, so
    # its margin is label − 9 (label 9 leads class 8 by 1) at every draw.
    receiver = jax.tree.map(np.zeros_like, state.params["receiver"])
    receiver["mlp"]["out"]["bias"] = np.arange(10.0, dtype=np.float32)
    images, labels = _images(12), np.array([9, 0, 5, 8] * 3)
    protocol, key = Protocol(draws=3, batch_size=5), jax.random.PRNGKey(7)
    rows = population.per_sample_outcomes(system, state.params, state.batch_stats, images,
                                          labels, protocol=protocol, key=key,
                                          receiver=(receiver, None))
    assert set(rows) == {"margin", "sse"}
    assert rows["margin"].shape == rows["sse"].shape == (12,)
    np.testing.assert_allclose(rows["margin"], [1.0, -9.0, -4.0, -1.0] * 3, atol=1e-6)
    # The reconstruction error is `passes.mean_sse`'s, same key, batches and draws.
    np.testing.assert_allclose(rows["sse"], mean_sse(system, state.params, state.batch_stats,
                                                     images, protocol, key, 3), rtol=1e-6)
    # Without `receiver`, the system's own reads x̂: the same margins once it is put in.
    own = population.per_sample_outcomes(
        system, {**state.params, "receiver": receiver}, state.batch_stats, images, labels,
        protocol=protocol, key=key)
    np.testing.assert_allclose(own["margin"], rows["margin"])
    with pytest.raises(ValueError, match="12 images but 3 labels"):
        population.per_sample_outcomes(system, state.params, state.batch_stats, images,
                                       labels[:3], protocol=protocol, key=key)


@pytest.mark.parametrize("binning", population.BINNINGS)
def test_klom_of_identical_populations_is_zero_and_of_disjoint_ones_large(binning):
    rng = np.random.default_rng(0)
    retrain = rng.normal(size=(16, 400))
    assert np.all(population.klom(retrain, retrain, binning=binning) == 0.0)
    # Another draw of the same distribution: small, not 0 (16 runs a side).
    same = population.klom(rng.normal(size=(16, 400)), retrain, binning=binning)
    assert np.median(same) < 0.3
    apart = population.klom(retrain + 100.0, retrain, binning=binning)
    # No shared bin: about log((16 + 0.1·4) / 0.1) = 5.1 nats with the defaults.
    assert np.all(apart > 4.0) and np.median(apart) > 10 * np.median(same)


def test_klom_uses_one_set_of_bins_with_additive_smoothing():
    # Two bins over [0, 1]: the method's two runs in the first, retraining's in the second;
    # p = (2.1, 0.1) / 2.2, q = (0.1, 2.1) / 2.2.
    p = np.array([2.1, 0.1]) / 2.2
    expected = float(np.sum(p * np.log(p / p[::-1])))
    score = population.klom(np.zeros((2, 1)), np.ones((2, 1)), bins=2)
    np.testing.assert_allclose(score, [expected])
    # Every value equal: all in one bin, nothing to tell apart.
    assert population.klom(np.full((3, 2), 4.0), np.full((3, 2), 4.0)).tolist() == [0.0, 0.0]


@pytest.mark.parametrize("arguments, message", [
    ((np.zeros((2, 3)), np.zeros((2, 4))), "3 samples"),
    ((np.zeros(3), np.zeros((2, 3))), "method_values must be a \\(runs, samples\\)"),
    ((np.zeros((2, 3)), np.full((2, 3), np.nan)), "retrain_values holds non-finite"),
])
def test_klom_refuses_mismatched_or_non_finite_values(arguments, message):
    with pytest.raises(ValueError, match=message):
        population.klom(*arguments)


@pytest.mark.parametrize("setting, message", [
    ({"bins": 0}, "bins must be"), ({"binning": "log"}, "binning must be"),
    ({"smoothing": 0.0}, "smoothing must be")])
def test_klom_refuses_bad_settings(setting, message):
    with pytest.raises(ValueError, match=message):
        population.klom(np.zeros((2, 3)), np.zeros((2, 3)), **setting)


def test_the_noise_floor_puts_retrainings_first_half_against_its_second():
    values = np.random.default_rng(1).normal(size=(5, 30))
    # Odd N: runs 0-1 against 2-3, the last left out.
    np.testing.assert_array_equal(population.noise_floor(values, bins=3),
                                  population.klom(values[:2], values[2:4], bins=3))
    halves = np.concatenate([np.zeros((4, 2)), np.ones((4, 2))])
    assert np.all(population.noise_floor(halves) > 3.0)  # halves that disagree
    with pytest.raises(ValueError, match="at least 2 retraining runs"):
        population.noise_floor(values[:1])


def test_the_summary_is_the_median_and_95th_percentile():
    assert population.klom_summary(np.arange(1.0, 21.0)) == {
        "median": 10.5, "p95": pytest.approx(19.05), "mean": 10.5}
    with pytest.raises(ValueError, match="no scores"):
        population.klom_summary(np.array([]))


# --- benchmarks.population -----------------------------------------------------------------


@pytest.fixture(scope="module")
def bench():
    from benchmarks import population as bench
    return bench


@pytest.mark.parametrize("change, message", [
    ({"runs": 1}, "--population_runs must be at least 2"),
    ({"retrain_alone": 5}, "--population_retrain_alone must lie in \\[0, "),
    ({"method_alone": -2}, "--population_method_alone must lie"),
    ({"method": "retrain"}, "--population_method must be one of scu, "),
    ({"method": "scu,salun,scu"}, "--population_method names a method twice"),
    ({"bins": 0}, "--population_bins must be at least 1"),
    ({"binning": "log"}, "--population_binning must be width or quantile"),
    ({"smoothing": -1.0}, "--population_smoothing must be a positive"),
    ({"remain": 0}, "--population_remain must be at least 1"),
    ({"repeats": 0}, "--population_repeats must be at least 1")])
def test_bad_arguments_are_refused_in_one_line(bench, change, message):
    arguments = {"runs": 4, "retrain_alone": 2, "method_alone": -1, "method": "scu", "bins": 4,
                 "binning": "width", "smoothing": 0.1, "remain": 10, "repeats": 1, **change}
    with pytest.raises(ValueError, match=message) as raised:
        bench.check_arguments(**arguments)
    assert "\n" not in str(raised.value)


def test_arguments_resolve_all_runs_and_config_overrides(bench):
    assert bench.check_arguments(4, 2, -1, "scu", 4, "width", 0.1, 10) == (2, 4)
    assert bench.check_arguments(4, 2, 0, "scu,salun,vbu", 4, "width", 0.1, 10) == (2, 0)
    config = bench.base_config(["train.epochs=2", "erasure.edr=0.04"], "scu")
    assert (config.train.epochs, config.erasure.edr, config.evaluation.mi_steps) == (2, 0.04, 0)
    for bad, message in (("train.epochs", "is not FIELD=VALUE"), ("train.nope=1", "train.nope"),
                         ("train.epochs=x", "train.epochs=x")):
        with pytest.raises(ValueError, match=message):
            bench.base_config([bad], "scu")


def test_a_bad_flag_exits_with_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.population", "--population_runs=1",
         f"--population_workdir={tmp_path}"], capture_output=True, text=True, cwd=ROOT,
        timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "benchmarks.population: error: --population_runs must be at least 2 (the noise floor "
        "splits retraining in halves), got 1"]


def test_the_shared_remain_subsample_holds_only_samples_every_run_trained_on(bench):
    def split(indices):
        indices = np.array(indices)
        return types.SimpleNamespace(remain_indices=indices, remain_images=indices * 10,
                                     remain_labels=indices % 3)

    splits = [split([1, 2, 3, 5, 8]), split([0, 2, 3, 5, 9]), split([2, 3, 4, 5])]
    images, labels = bench.shared_remain(splits, 10, seed=0)
    assert images.tolist() == [20, 30, 50] and labels.tolist() == [2, 0, 2]
    images, _ = bench.shared_remain(splits, 2, seed=0)
    assert len(images) == 2 and set(images.tolist()) <= {20, 30, 50}
    with pytest.raises(ValueError, match="no training sample"):
        bench.shared_remain([split([1]), split([2])], 2, seed=0)


def test_the_report_table_and_figure_on_a_mock_population(bench, tmp_path):
    rng = np.random.default_rng(0)
    runs, sizes = 4, {"erased": 3, "remain": 5, "test": 6}

    def population_of(shift):
        return {s: {o: rng.normal(size=(runs, n)) + shift for o in bench.OUTCOMES}
                for s, n in sizes.items()}

    values = {"original": population_of(50.0), "retrain": population_of(0.0),
              "scu": population_of(0.0)}
    scores = bench.klom_scores(values, "scu", bins=4, binning="width", smoothing=0.1)
    assert set(scores["erased"]["margin"]) == {"scu", "scu_half", "original", "original_half",
                                               "noise_floor"}
    # Doing nothing here is far from retraining: no bin shared.
    assert np.all(scores["test"]["sse"]["original"] > 3.0)
    timing = {"retrain": {"seconds": 100.0, "compile_seconds": 5.0, "runs_together": 4,
                          "measured_now": True, "load_average": [2.1, 2.0],
                          "alone": {"runs": 2, "seconds": 80.0, "compile_seconds": 8.0,
                                    "max_param_difference": 1e-7, "measured_now": True}},
              "scu": {"seconds": 2.0, "compile_seconds": 6.0, "runs_together": 4,
                      "measured_now": True, "repeats": 2, "epochs": [3, 5, 4, 4]}}
    sets = {name: (np.zeros((n, 1)), np.zeros(n)) for name, n in sizes.items()}
    report = bench.report_of("python -m benchmarks.population", "scu", "mock job",
                             {"bins": 4, "binning": "width", "smoothing": 0.1}, sets, timing,
                             values, scores)
    # 2 retrainings alone in 80 s: 160 s for 4, against 100 s as one program; with 4 s of
    # compilation a run alone against 5 s for the program: 176 s against 105 s.
    assert report["speedup"]["retrain"] == {"alone_seconds_for_n": 160.0, "extrapolated": True,
                                            "speedup": 1.6,
                                            "speedup_with_compile": pytest.approx(176 / 105)}
    assert report["speedup"]["scu"] is None and report["runs"] == 4
    lines = bench.markdown(report).splitlines()
    assert ("| retrain | 4 | 100.0 (5.0) | 2 of 4, extrapolated ×2 | 160.0 (4.0) | **1.60×** | "
            "1.68× | 1.0e-07 |") in lines
    assert "| scu | 4 | 2.0 (6.0) | skipped | – | – | – | – |" in lines
    notes = [line for line in lines if line.startswith("Compilation apart")][0]
    assert "scu: best of 2 timings each way" in notes
    assert "scu: the runs stopped after 3–5 epochs (mean 4.0)" in notes
    assert "start and end of retrain one program: 2.1 → 2" in notes
    klom_rows = [line for line in lines if line.startswith("| D_e (3) |")]
    assert len(klom_rows) == 2 and klom_rows[0].startswith("| D_e (3) | margin | ")
    summary = report["klom"]["test"]["sse"]["original"]
    assert f"{summary['median']:.2f} / {summary['p95']:.2f}" in [
        line for line in lines if line.startswith("| test (6) | sse |")][0]
    bench.figure(scores, "scu", tmp_path / "population.png")
    assert (tmp_path / "population.png").stat().st_size > 10_000

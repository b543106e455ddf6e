"""scu-experiment: grids, the append-only rows, a smoke sweep with figures and report, a rerun that
runs nothing, and a SIGKILL mid-sweep that a rerun completes without duplicated rows."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import uuid

import pytest

from scu_jax import errors
from scu_jax import experiment, report
from scu_jax.errors import CheckpointMismatchError
from scu_jax.errors import ConfigError

REPO = pathlib.Path(__file__).resolve().parent.parent
EDR_SMOKE = f"--config={REPO / 'configs' / 'experiments' / 'edr_sweep.py'}:smoke"
COMPARED = ("backdoor_accuracy", "accuracy_clean", "mse_clean", "mse_erased", "mia_auc",
            "mi_mine_erased", "mse_to_retrain")


@pytest.mark.parametrize("name,arg,cells,groups", [
    ("edr_sweep", None, 5 * 3 * 7, 5 * 3),  # 5 EDRs × 3 seeds × 7 methods (original included)
    ("snr_sweep", None, 3 * 5 * 3 * 7, 3 * 5 * 3),  # 3 channels × 5 SNRs × 3 seeds
    ("beta_sweep", None, 3 * (2 + 3 * 5), 3),  # per seed: original, retrain, 3 methods × 5 β_u
    ("edr_sweep", "smoke", 2 * 4, 2),
    ("snr_sweep", "smoke", 2 * 2 * 4, 4),
    ("beta_sweep", "smoke", 2 + 2 * 2, 1),
    ("edr_sweep", "tfds,smoke", 3 * 2 * 4, 6),
    ("edr_sweep", "reference", 5 * 3 * 7, 5 * 3),
    ("edr_sweep", "tfds,reference,smoke", 3 * 2 * 4, 6),
])
def test_grid_sizes(name, arg, cells, groups):
    config = experiment.experiment_config(name, arg)
    expanded = experiment.validate_experiment(config)
    assert len(expanded) == cells
    assert len({cell.id for cell in expanded}) == cells
    assert len({cell.group for cell in expanded}) == groups
    # Retraining comes first in every group: the other cells measure their distance to it.
    first = {}
    for cell in expanded:
        first.setdefault(cell.group, cell.method)
    assert set(first.values()) == {"retrain"}


def test_presets_of_the_sweeps():
    tfds = experiment.experiment_config("edr_sweep", "tfds")
    assert sorted(tfds.bases) == ["cifar10", "cifar100", "mnist"]
    assert tfds.bases.cifar10.model.name == "resnet18" and tfds.bases.cifar100.erasure.base_class == 18
    snr = experiment.experiment_config("snr_sweep")
    assert (snr.bases.mnist5k.train.epochs, snr.bases.mnist5k.train.receiver_epochs) == (100, 50)
    edr = experiment.experiment_config("edr_sweep")
    assert (edr.bases.mnist5k.train.epochs, edr.bases.mnist5k.evaluation.mi_steps) == (300, 500)
    assert tuple(edr.grid.edr) == (0.02, 0.04, 0.06, 0.08, 0.10)
    # The reference protocol keeps each dataset's own channel: Rician 6 dB for MNIST (the shipped
    # script), AWGN 20 dB for CIFAR, both with the scalar draw.
    reference = experiment.experiment_config("edr_sweep", "mnist5k,cifar10,reference")
    groups = {cell.group for cell in experiment.validate_experiment(reference)}
    assert {(g.dataset, g.channel, g.family, g.snr_db) for g in groups} == {
        ("mnist5k", "rician", "paper", 6.0), ("cifar10", "awgn", "paper", 20.0)}
    cell = next(c for c in experiment.expand(reference) if c.method == "scu" and c.group.dataset == "mnist5k")
    config = experiment.cell_config(reference.bases.mnist5k, cell)
    assert (config.channel.draw, config.evaluation.channel, config.unlearning.early_stop) == (
        "scalar", "none", False)


@pytest.mark.parametrize("change,message", [
    (lambda c: setattr(c.grid, "edr", (0.02, 0.7)), "config.grid.edr=(0.02, 0.7): must be numbers in (0, 0.5]"),
    (lambda c: setattr(c.grid, "channels", ("awgn", "laser")), "config.grid.channels=('awgn', 'laser')"),
    (lambda c: setattr(c.grid, "methods", ()), "config.grid.methods=(): must be distinct values"),
    (lambda c: setattr(c.grid, "seeds", (0, 0)), "config.grid.seeds=(0, 0): must be distinct"),
    (lambda c: setattr(c.grid, "snr_db", (float("nan"),)), "config.grid.snr_db=(nan,)"),
    (lambda c: setattr(c.bases.mnist5k.train, "epochs", -1), "config.bases.mnist5k.train.epochs=-1"),
])
def test_validation_names_field_value_and_rule(change, message):
    config = experiment.experiment_config("edr_sweep", "smoke")
    change(config)
    with pytest.raises(ConfigError) as error:
        experiment.validate_experiment(config)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_unknown_experiment_argument():
    with pytest.raises(ConfigError, match="unknown experiment config argument 'imagenet'"):
        experiment.experiment_config("edr_sweep", "imagenet")


def test_read_rows_drops_a_cut_last_line_and_repeats(tmp_path):
    rows = [{"cell": "a", "x": 1}, {"cell": "b", "x": 2}, {"cell": "a", "x": 3}]
    text = "".join(json.dumps(row) + "\n" for row in rows) + '{"cell": "c", "x"'
    (tmp_path / experiment.ROWS_FILE).write_text(text)
    assert [row["x"] for row in experiment.read_rows(tmp_path)] == [1, 2]
    assert (tmp_path / experiment.ROWS_FILE).read_text() == text  # reading alone changes nothing
    assert [row["x"] for row in experiment.read_rows(tmp_path, repair=True)] == [1, 2]
    assert (tmp_path / experiment.ROWS_FILE).read_text().count("\n") == 2


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("jax_cache"))


@pytest.fixture(scope="module")
def smoke_sweep(tmp_path_factory, cache_dir):
    workdir = tmp_path_factory.mktemp("sweep") / "edr"
    config = experiment.experiment_config("edr_sweep", "smoke")
    done = experiment.run_experiment(config, workdir, workers=0, compilation_cache=cache_dir)
    report.write_report(workdir)
    return workdir, done


@pytest.mark.slow
def test_smoke_sweep_writes_rows_csv_figures_and_report(smoke_sweep):
    workdir, done = smoke_sweep
    assert (done.cells, done.ran, done.skipped) == (8, 8, 0)
    rows = experiment.read_rows(workdir)
    assert len(rows) == 8 and len({row["cell"] for row in rows}) == 8
    assert {(row["edr"], row["method"]) for row in rows} == {
        (edr, method) for edr in (0.04, 0.08) for method in ("original", "retrain", "scu", "vbu")}
    for row in rows:
        assert row["status"] == "ok" and 0.0 <= row["backdoor_accuracy"] <= 1.0
        assert row["dataset"] == "mnist5k" and row["seed"] == 0 and row["channel"] == "awgn"
        assert (row["beta_u"] is None) == (row["method"] in ("original", "retrain"))
        if row["method"] != "original":
            assert row["unlearn_seconds"] > 0
        if row["method"] not in ("original", "retrain"):
            assert row["mse_to_retrain"] >= 0.0
    by = {(row["edr"], row["method"]): row for row in rows}
    # At EDR 8 % the smoke system learns the backdoor; retraining without D_e does not.
    assert by[(0.08, "original")]["backdoor_accuracy"] > by[(0.08, "retrain")]["backdoor_accuracy"] + 0.3

    csv_lines = (workdir / experiment.CSV_FILE).read_text().splitlines()
    assert len(csv_lines) == 9
    assert csv_lines[0].startswith(",".join(experiment.KEY_FIELDS) + ",")

    figures = workdir / report.FIGURES_DIR
    for stem in ("edr_backdoor_accuracy", "edr_accuracy_clean", "edr_mse_clean", "edr_overview",
                 "edr_unlearn_seconds", "unlearning_time", "reconstructions", "membership_scores"):
        for extension in ("png", "pdf"):
            assert (figures / f"{stem}.{extension}").stat().st_size > 5_000, stem

    text = (workdir / report.REPORT_FILE).read_text()
    assert "| method | seeds | backdoor accuracy on D_e (%)" in text
    assert text.count("| scu (β_u 0.1) | 1 |") == 2 and text.count("| original | 1 |") == 2
    # One receiver reads every row; retraining's own is a row of its own.
    assert text.count("| retrain (own receiver) | 1 |") == 2
    assert "| mnist5k | mlp (d=20) | awgn paper 5 dB | element | through it | original |" in text
    assert "AMD" in text or "cpu" in text  # the machine
    assert "No cell of this experiment is in a published setting" in text  # smoke systems
    assert "Where our numbers differ" in text and "per latent element" in text
    assert "![edr_overview](figures/edr_overview.png)" in text


@pytest.mark.slow
def test_rerun_runs_zero_cells_and_changes_no_row(smoke_sweep, cache_dir):
    workdir, _ = smoke_sweep
    before = (workdir / experiment.ROWS_FILE).read_bytes()
    config = experiment.experiment_config("edr_sweep", "smoke")
    again = experiment.run_experiment(config, workdir, workers=0, compilation_cache=cache_dir)
    assert (again.ran, again.skipped) == (0, 8)
    assert (workdir / experiment.ROWS_FILE).read_bytes() == before
    runs = json.loads((workdir / experiment.EXPERIMENT_FILE).read_text())["runs"]
    assert [run["cells_run"] for run in runs][-2:] == [8, 0]


@pytest.mark.slow
def test_workdir_of_another_experiment_is_refused(smoke_sweep, cache_dir):
    workdir, _ = smoke_sweep
    before = (workdir / experiment.ROWS_FILE).read_bytes()
    config = experiment.experiment_config("edr_sweep", "smoke")
    config.bases.mnist5k.train.learning_rate = 0.5
    with pytest.raises(CheckpointMismatchError, match="bases.mnist5k.train.learning_rate is 0.001"):
        experiment.run_experiment(config, workdir, workers=0, compilation_cache=cache_dir)
    assert (workdir / experiment.ROWS_FILE).read_bytes() == before


def _processes_with(marker: str) -> list[int]:
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigkill_mid_sweep_then_rerun_completes_without_duplicates(smoke_sweep, cache_dir, tmp_path):
    reference = {row["cell"]: row for row in experiment.read_rows(smoke_sweep[0])}
    workdir = tmp_path / "killed"
    marker = f"SCU_TEST_MARKER={uuid.uuid4().hex}"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", marker.split("=")[0]: marker.split("=")[1]}
    command = [sys.executable, "-m", "scu_jax.binaries.experiment", EDR_SMOKE,
               f"--workdir={workdir}", "--workers=1", f"--compilation_cache={cache_dir}",
               "--report=false"]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    rows_file = workdir / experiment.ROWS_FILE
    deadline = time.monotonic() + 300
    while not (rows_file.exists() and rows_file.read_text().count("\n") >= 3):
        assert process.poll() is None and time.monotonic() < deadline, "ended before the kill point"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    # The worker dies with its parent: nothing keeps writing into the workdir.
    deadline = time.monotonic() + 10
    while _processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _processes_with(marker)
    finished_before = len(experiment.read_rows(workdir))
    assert 3 <= finished_before < 8

    rerun = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"{8 - finished_before} cells run, {finished_before} already finished, of 8" in rerun.stdout
    rows = experiment.read_rows(workdir)
    assert sorted(row["cell"] for row in rows) == sorted(reference)
    assert rows_file.read_text().count("\n") == 8  # no duplicated or cut line
    for row in rows:  # identical to the uninterrupted in-process sweep
        expected = reference[row["cell"]]
        assert {n for n in COMPARED if n in row} == {n for n in COMPARED if n in expected}
        for name in (n for n in COMPARED if n in expected):
            assert row[name] == pytest.approx(expected[name], abs=1e-6), (row["cell"], name)


@pytest.mark.slow
def test_cifar10_sweep_through_mock_tfds_draws_colour_samples(mock_tfds, tmp_path, cache_dir):
    """The tfds path end to end: a CIFAR-10 cell on mock data, its row, figures and report."""
    config = experiment.experiment_config("edr_sweep", "cifar10,smoke")
    base = config.bases.cifar10
    base.max_train_examples, base.max_test_examples, base.eval_batch_size = 64, 32, 32
    base.unlearning.max_epochs = 1
    config.grid.edr, config.grid.methods = (0.1,), ("original",)
    done = experiment.run_experiment(config, tmp_path, workers=0, compilation_cache=cache_dir)
    assert (done.cells, done.ran) == (1, 1)
    rows = experiment.read_rows(tmp_path)
    assert [row["method"] for row in rows] == ["original"]
    assert all(row["dataset"] == "cifar10" and row["status"] == "ok" for row in rows)
    assert all(row["snr_db"] == 20.0 for row in rows)  # the CIFAR preset's SNR
    report.write_report(tmp_path)
    assert (tmp_path / "figures" / "reconstructions.png").stat().st_size > 5_000
    assert "| original | 1 |" in (tmp_path / report.REPORT_FILE).read_text()


def test_a_second_run_in_the_same_workdir_is_refused(tmp_path):
    config = experiment.experiment_config("edr_sweep", "smoke")
    # What a running scu-experiment of the same config has written and holds.
    (tmp_path / experiment.EXPERIMENT_FILE).write_text(json.dumps(
        {"fingerprint": experiment._result_fingerprint(config), "runs": []}))
    with experiment._exclusive(tmp_path):
        with pytest.raises(FileExistsError, match="another scu-experiment is running in"):
            experiment.run_experiment(config, tmp_path, workers=0)
    assert not (tmp_path / experiment.ROWS_FILE).exists()


def test_a_diverging_method_is_a_row_not_a_failure(monkeypatch, tmp_path):
    from scu_jax.runs import unlearn

    def diverge(*args, **kwargs):
        raise errors.NonFiniteError("vbu: loss became non-finite at unlearning step 3 (epoch 1)")

    monkeypatch.setattr(unlearn, "unlearn_and_evaluate", diverge)
    config = experiment.experiment_config("edr_sweep", "smoke").bases.mnist5k
    out = experiment.run_task({"kind": "cell", "method": "vbu", "config": config.to_dict(),
                               "train_dir": str(tmp_path / "train"), "out_dir": str(tmp_path / "vbu"),
                               "reference_dir": None})
    assert out["status"] == "non-finite" and "unlearning step 3" in out["error"]
    rows = [{"cell": f"g/{m}", "group": "g", "method": m, "dataset": "mnist5k", "channel": "awgn",
             "family": "paper", "snr_db": 5.0, "edr": 0.06, "beta_u": None, "seed": 0,
             "status": status, "backdoor_accuracy": 0.1}
            for m, status in (("scu", "ok"), ("vbu", "non-finite"))]
    summary = report.aggregate(rows)
    by_method = {key[-1]: entry for key, entry in summary.items()}
    assert by_method["vbu"]["diverged"] == 1 and by_method["vbu"]["seeds"] == 0
    assert "backdoor_accuracy" not in by_method["vbu"]
    assert "(+1 diverged)" in report.results_tables(summary)


def test_report_compares_the_reference_protocol_with_the_paper():
    """Rows of the faithful MNIST setting (Rician 6 dB, scalar draw) sit beside the published EDR
    table, and their gaps are explained with the reference protocol's reasons."""
    base = experiment.experiment_config("edr_sweep", "reference").bases.mnist5k.to_dict()
    rows = [{"cell": f"g/{m}", "group": "g", "method": m, "dataset": "mnist5k", "channel": "rician",
             "family": "paper", "snr_db": 6.0, "edr": 0.06, "beta_u": None, "seed": 0, "status": "ok",
             "backdoor_accuracy": b, "accuracy_clean": 0.97, "mse_clean": 3.0, "mse_erased": e}
            for m, b, e in (("original", 0.98, 3.2), ("scu", 0.005, 8.0))]
    table, gaps = report.paper_comparison(report.aggregate(rows), {"mnist5k": base})
    assert "| mnist5k | 6 % | rician 6 dB | scu | 97.0 / 97.6 | 0.5 / 7.3 | 3.00 / 2.80 | 8.00 / 6.13 |" in table
    lines = report.gap_lines(gaps, {"mnist5k": base})
    assert any("MSE erased" in line and "300 times instead of 20" in line for line in lines), lines

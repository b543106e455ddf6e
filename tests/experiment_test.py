"""scu-experiment end to end: a smoke sweep with figures and report, a rerun that runs nothing,
a refused workdir, and a SIGKILL mid-sweep that a rerun completes without duplicated rows."""

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pytest
from conftest import made_once

from scu_jax import errors
from scu_jax.errors import CheckpointMismatchError
from scu_jax.experiments.report import write_report
from scu_jax.experiments.rows import KEY_FIELDS, read_rows
from scu_jax.experiments.scheduler import run_experiment
from scu_jax.experiments.sweeps import experiment_config
from scu_jax.experiments.workdir import (CSV_FILE, EXPERIMENT_FILE, FIGURES_DIR, REPORT_FILE,
                                         ROWS_FILE, exclusive, result_fingerprint)
from scu_jax.experiments.worker import run_task

REPO = pathlib.Path(__file__).resolve().parent.parent
EDR_SMOKE = f"--config={REPO / 'configs' / 'experiments' / 'edr_sweep.py'}:smoke"
COMPARED = ("backdoor_accuracy", "accuracy_clean", "mse_clean", "mse_erased", "mia_auc",
            "mi_mine_erased", "mse_to_retrain")


@pytest.fixture(scope="module")
def smoke_sweep(tmp_path_factory, cache_dir):
    """The smoke sweep's workdir (made once per test run; tests that run in it use a copy) and
    what its run reported: (cells, ran, skipped)."""
    def make(directory):
        workdir = directory / "edr"
        done = run_experiment(experiment_config("edr_sweep", "smoke"), workdir, workers=0,
                              compilation_cache=cache_dir)
        write_report(workdir)
        return [done.cells, done.ran, done.skipped]

    directory, done = made_once(tmp_path_factory, "smoke_sweep", make)
    return directory / "edr", tuple(done)


def _copy(workdir, tmp_path):
    copy = tmp_path / "edr"
    shutil.copytree(workdir, copy)
    return copy


@pytest.mark.slow
def test_smoke_sweep_writes_rows_csv_figures_and_report(smoke_sweep):
    workdir, done = smoke_sweep
    assert done == (8, 8, 0)
    rows = read_rows(workdir)
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

    csv_lines = (workdir / CSV_FILE).read_text().splitlines()
    assert len(csv_lines) == 9
    assert csv_lines[0].startswith(",".join(KEY_FIELDS) + ",")

    figures = workdir / FIGURES_DIR
    for stem in ("edr_backdoor_accuracy", "edr_accuracy_clean", "edr_mse_clean", "edr_overview",
                 "edr_unlearn_seconds", "unlearning_time", "reconstructions", "membership_scores"):
        for extension in ("png", "pdf"):
            assert (figures / f"{stem}.{extension}").stat().st_size > 5_000, stem

    text = (workdir / REPORT_FILE).read_text()
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
def test_rerun_runs_zero_cells_and_changes_no_row(smoke_sweep, cache_dir, tmp_path):
    workdir = _copy(smoke_sweep[0], tmp_path)
    before = (workdir / ROWS_FILE).read_bytes()
    config = experiment_config("edr_sweep", "smoke")
    again = run_experiment(config, workdir, workers=0, compilation_cache=cache_dir)
    assert (again.ran, again.skipped) == (0, 8)
    assert (workdir / ROWS_FILE).read_bytes() == before
    runs = json.loads((workdir / EXPERIMENT_FILE).read_text())["runs"]
    assert [run["cells_run"] for run in runs][-2:] == [8, 0]


@pytest.mark.slow
def test_workdir_of_another_experiment_is_refused(smoke_sweep, cache_dir, tmp_path):
    workdir = _copy(smoke_sweep[0], tmp_path)
    before = (workdir / ROWS_FILE).read_bytes()
    config = experiment_config("edr_sweep", "smoke")
    config.bases.mnist5k.train.learning_rate = 0.5
    with pytest.raises(CheckpointMismatchError, match="bases.mnist5k.train.learning_rate is 0.001"):
        run_experiment(config, workdir, workers=0, compilation_cache=cache_dir)
    assert (workdir / ROWS_FILE).read_bytes() == before


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


def _one_edr_sweep(workdir, cache_dir):
    """The smoke sweep at its first EDR in one worker: (command, env, marker), the marker an
    environment variable that tells its processes apart (`_processes_with`)."""
    marker = f"SCU_TEST_MARKER={uuid.uuid4().hex}"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", marker.split("=")[0]: marker.split("=")[1]}
    command = [sys.executable, "-m", "scu_jax.binaries.experiment", EDR_SMOKE,
               "--config.grid.edr=(0.04,)", f"--workdir={workdir}", "--workers=1",
               f"--compilation_cache={cache_dir}", "--report=false"]
    return command, env, marker


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigkill_mid_sweep_then_rerun_completes_without_duplicates(smoke_sweep, cache_dir, tmp_path):
    # The smoke sweep's first EDR: its 4 cells are the reference's (the grid is not part of what
    # identifies an experiment's rows).
    reference = {row["cell"]: row for row in read_rows(smoke_sweep[0]) if row["edr"] == 0.04}
    assert len(reference) == 4
    workdir = tmp_path / "killed"
    command, env, marker = _one_edr_sweep(workdir, cache_dir)
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    rows_file = workdir / ROWS_FILE
    deadline = time.monotonic() + 300
    while not (rows_file.exists() and rows_file.read_text().count("\n") >= 2):
        assert process.poll() is None and time.monotonic() < deadline, "ended before the kill point"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    # The worker dies with its parent: nothing keeps writing into the workdir.
    deadline = time.monotonic() + 10
    while _processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _processes_with(marker)
    finished_before = len(read_rows(workdir))
    assert 2 <= finished_before < 4

    rerun = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"{4 - finished_before} cells run, {finished_before} already finished, of 4" in rerun.stdout
    rows = read_rows(workdir)
    assert sorted(row["cell"] for row in rows) == sorted(reference)
    assert rows_file.read_text().count("\n") == 4  # no duplicated or cut line
    for row in rows:  # identical to the uninterrupted in-process sweep
        expected = reference[row["cell"]]
        assert {n for n in COMPARED if n in row} == {n for n in COMPARED if n in expected}
        for name in (n for n in COMPARED if n in expected):
            assert row[name] == pytest.approx(expected[name], abs=1e-6), (row["cell"], name)


@pytest.mark.slow
def test_sigterm_stops_the_workers_at_a_boundary_and_says_so_in_one_line(cache_dir, tmp_path):
    """SIGTERM to the sweep's parent alone: it forwards it to its worker, which stops its task at
    the next epoch boundary (saving a training there); one line, exit 143, no worker left."""
    workdir = tmp_path / "stopped"
    command, env, marker = _one_edr_sweep(workdir, cache_dir)
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    # The group's training has saved an epoch: the worker is mid-task.
    while not list(workdir.glob("runs/**/train/checkpoints/[0-9]*")):
        assert process.poll() is None and time.monotonic() < deadline, "ended before the signal"
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=180)
    said = [line.rsplit("\r", 1)[-1] for line in stderr.splitlines()
            if "error" in line or "Traceback" in line]
    assert process.returncode == 143 and len(said) == 1, stderr[-3000:]
    assert said[0].startswith("scu-experiment: error: interrupted by SIGTERM: ")
    # (On a machine loaded past the grace period, a straggler is killed and the line says so.)
    assert re.search(r"stopped at an epoch boundary and saved what they checkpoint( \(1 still "
                     r"running after \d+ s were killed\))?; the same command resumes$", said[0]), said[0]
    deadline = time.monotonic() + 10
    while _processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _processes_with(marker)


@pytest.mark.slow
def test_cifar10_sweep_through_mock_tfds_draws_colour_samples(mock_tfds, tmp_path, cache_dir):
    """The tfds path end to end: a CIFAR-10 cell on mock data, its row, figures and report."""
    config = experiment_config("edr_sweep", "cifar10,smoke")
    base = config.bases.cifar10
    base.max_train_examples, base.max_test_examples, base.eval_batch_size = 64, 32, 32
    base.unlearning.max_epochs = 1
    config.grid.edr, config.grid.methods = (0.1,), ("original",)
    done = run_experiment(config, tmp_path, workers=0, compilation_cache=cache_dir)
    assert (done.cells, done.ran) == (1, 1)
    rows = read_rows(tmp_path)
    assert [row["method"] for row in rows] == ["original"]
    assert all(row["dataset"] == "cifar10" and row["status"] == "ok" for row in rows)
    assert all(row["snr_db"] == 20.0 for row in rows)  # the CIFAR preset's SNR
    write_report(tmp_path)
    assert (tmp_path / "figures" / "reconstructions.png").stat().st_size > 5_000
    assert "| original | 1 |" in (tmp_path / REPORT_FILE).read_text()


def test_a_second_run_in_the_same_workdir_is_refused(tmp_path):
    config = experiment_config("edr_sweep", "smoke")
    # What a running scu-experiment of the same config has written and holds.
    (tmp_path / EXPERIMENT_FILE).write_text(json.dumps(
        {"fingerprint": result_fingerprint(config), "runs": []}))
    with exclusive(tmp_path):
        with pytest.raises(FileExistsError, match="another scu-experiment is running in"):
            run_experiment(config, tmp_path, workers=0)
    assert not (tmp_path / ROWS_FILE).exists()


def test_a_diverging_method_is_a_row_not_a_failure(monkeypatch, tmp_path):
    from scu_jax.runs import unlearn

    def diverge(*args, **kwargs):
        raise errors.NonFiniteError("vbu: loss became non-finite at unlearning step 3 (epoch 1)")

    monkeypatch.setattr(unlearn, "unlearn_and_evaluate", diverge)
    config = experiment_config("edr_sweep", "smoke").bases.mnist5k
    out = run_task({"kind": "cell", "method": "vbu", "config": config.to_dict(),
                               "train_dir": str(tmp_path / "train"), "out_dir": str(tmp_path / "vbu"),
                               "reference_dir": None})
    assert out["status"] == "non-finite" and "unlearning step 3" in out["error"]


@pytest.mark.slow
def test_runs_together_sweep_gives_each_seed_its_row(tmp_path, cache_dir):
    """`runs_together`: the two seeds' trainings and their scu cells run as one program each
    (each run equal to its run alone: tests/train_test.py, tests/forget_runs_test.py); every
    cell gets its own row, and a rerun runs none."""
    config = experiment_config("edr_sweep", "smoke")
    config.grid.methods, config.grid.edr, config.grid.seeds = ("scu",), (0.04,), (0, 1)
    config.bases.mnist5k.train.epochs = config.bases.mnist5k.train.receiver_epochs = 1
    config.runs_together = True
    done = run_experiment(config, tmp_path, workers=0, compilation_cache=cache_dir)
    assert (done.cells, done.ran) == (2, 2)
    rows = {(row["seed"], row["method"]): row for row in read_rows(tmp_path)}
    assert sorted(rows) == [(0, "scu"), (1, "scu")]
    for seed in (0, 1):
        scu = rows[(seed, "scu")]
        assert scu["status"] == "ok" and scu["runs_together"] == 2
        assert 0 <= scu["backdoor_accuracy"] <= 1 and scu["steps"] > 0
        trained = json.loads((tmp_path / "runs" / scu["group"] / "train" / "results.json")
                             .read_text())
        assert trained["runs_together"] == 2
    assert rows[(0, "scu")]["mse_erased"] != rows[(1, "scu")]["mse_erased"]
    again = run_experiment(config, tmp_path, workers=0, compilation_cache=cache_dir)
    assert (again.cells, again.ran, again.skipped) == (2, 0, 2)


@pytest.mark.slow
def test_relearning_attack_over_an_experiment_goes_to_its_report(smoke_sweep, tmp_path):
    from scu_jax.experiments.relearning import attack_experiment, relearning_summary
    from scu_jax.experiments.workdir import RELEARNING_FILE, remove_results

    workdir = _copy(smoke_sweep[0], tmp_path)
    with pytest.raises(ValueError, match="no cell of .* is at EDR 0.05"):
        attack_experiment(workdir, edr=0.05)
    with pytest.raises(ValueError, match="hbu: not a method of .*grid"):
        attack_experiment(workdir, edr=0.08, methods=("scu", "hbu"))
    lines = []
    data = attack_experiment(workdir, edr=0.08, steps=(0, 3), methods=("original", "scu"),
                             log=lines.append)
    assert [(e["cell"].split("/")[-1], e["steps"]) for e in data["curves"]] == [
        ("scu_bu0.1", [0, 3]), ("original", [0, 3])]
    assert len(lines) == 2
    # Step 0 reads the system as it was saved: the original's backdoor is the sweep's row's
    # (same receiver and channel; the rest of D_e, one key, so within a few points).
    rows = {row["method"]: row for row in read_rows(workdir) if row["edr"] == 0.08}
    original = data["curves"][1]["curve"][0]
    assert abs(original["backdoor_accuracy"] - rows["original"]["backdoor_accuracy"]) < 0.15
    assert original["attack_images"] + original["heldout_images"] == rows["original"]["num_erased"]
    # Resumed: nothing attacked twice; another attack's steps are refused, not mixed in.
    again = attack_experiment(workdir, edr=0.08, steps=(0, 3), methods=("original", "scu"),
                              log=lines.append)
    assert again == data and len(lines) == 2
    with pytest.raises(ValueError, match="holds an attack with steps \\[0, 3\\]"):
        attack_experiment(workdir, edr=0.08, steps=(0, 5))
    summary = relearning_summary(data)
    (setting,) = summary  # one system per cell name and setting, its seeds together
    assert setting == ("mnist5k", "awgn", "paper", 5.0, 0.08)
    assert list(summary[setting]) == ["original", "scu"]  # the report's order
    write_report(workdir)
    text = (workdir / REPORT_FILE).read_text()
    assert "## Relearning attack" in text and RELEARNING_FILE in text
    assert "| system | 0 steps | 3 steps | back above 50 % after (per seed) |" in text
    assert (workdir / FIGURES_DIR / "relearning.png").stat().st_size > 5_000
    # A file that is not an attack's is refused before the report writes anything.
    (workdir / RELEARNING_FILE).write_text('{"curves": [{"cell": 1}]}')
    before = (workdir / REPORT_FILE).read_bytes()
    with pytest.raises(ValueError, match="is not a relearning attack's file"):
        write_report(workdir)
    assert (workdir / REPORT_FILE).read_bytes() == before
    remove_results(workdir)  # --overwrite: a new experiment's systems, none of the old curves
    assert not (workdir / RELEARNING_FILE).exists()

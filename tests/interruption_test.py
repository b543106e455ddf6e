"""SIGKILL a real training run at several points; the same command then finishes identically."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
SMOKE = f"--config={REPO / 'configs' / 'mnist.py'}:smoke"
METRICS = ("accuracy_clean", "backdoor_accuracy", "mse_clean", "mse_erased", "accuracy_test")


def _command(workdir):
    return [sys.executable, "-m", "scu_jax.binaries.train", SMOKE, f"--workdir={workdir}"]


def _env():
    return {**os.environ, "JAX_PLATFORMS": "cpu"}


def _finished_steps(workdir: pathlib.Path, subdir: str = "checkpoints") -> list[int]:
    directory = workdir / subdir
    if not directory.exists():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def _kill_when(workdir: pathlib.Path, condition, timeout=240, command=None):
    """Starts `command` (scu-train on `workdir` by default); SIGKILLs it once `condition(workdir)`."""
    process = subprocess.Popen(command or _command(workdir), cwd=REPO, env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while not condition(workdir):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail("the run ended before the kill point was reached")
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()


@pytest.fixture(scope="module")
def reference_workdir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("kill") / "reference"
    subprocess.run(_command(workdir), cwd=REPO, env=_env(), check=True, capture_output=True)
    return workdir


@pytest.fixture(scope="module")
def uninterrupted(reference_workdir):
    return json.loads((reference_workdir / "results.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("kill_point", ["first_epoch_saved", "codec_phase", "evaluating"])
def test_sigkill_then_rerun_matches_uninterrupted(uninterrupted, tmp_path, kill_point):
    workdir = tmp_path / "run"
    conditions = {
        # The first receiver epoch's checkpoint has appeared.
        "first_epoch_saved": lambda w: len(_finished_steps(w)) >= 1,
        # Inside the codec phase: the receiver epochs (3) are saved and more is under way.
        "codec_phase": lambda w: max(_finished_steps(w), default=0) >= 4,
        # Every epoch is saved, results.json not yet written: evaluation or the final save.
        "evaluating": lambda w: max(_finished_steps(w), default=0) >= 7,
    }
    _kill_when(workdir, conditions[kill_point])
    assert not (workdir / "results.json").exists() or kill_point == "evaluating"
    rerun = subprocess.run(_command(workdir), cwd=REPO, env=_env(), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    results = json.loads((workdir / "results.json").read_text())
    for name in METRICS:
        assert results[name] == pytest.approx(uninterrupted[name], abs=1e-6), name
    assert results["steps"] == uninterrupted["steps"]


@pytest.mark.slow
def test_interrupted_save_leaves_previous_checkpoint_restorable(tmp_path):
    """A save killed half-way leaves Orbax's temporary folder; the latest finished step wins."""
    from scu_jax import config as config_lib
    from scu_jax import presets
    from scu_jax.runs import train
    from scu_jax.runs.checkpointing import Checkpoints

    config = presets.apply_variant(config_lib.default_config(), "smoke")
    config.train.epochs = 1
    workdir = tmp_path / "run"
    train.train_and_evaluate(config, str(workdir))
    latest = _finished_steps(workdir)[-1]
    # What a kill during the next save leaves behind: a half-written temporary step.
    partial = workdir / "checkpoints" / f"{latest + 1}.orbax-checkpoint-tmp-1234"
    shutil.copytree(workdir / "checkpoints" / str(latest), partial)
    next(p for p in partial.rglob("*") if p.is_file()).write_bytes(b"")
    assert Checkpoints(workdir).latest_step() == latest
    state = train.train_and_evaluate(config, str(workdir))  # resumes; nothing left to train
    assert int(state.step) == 4 * 64


@pytest.mark.slow
def test_sigkill_during_unlearning_by_retraining_then_rerun_matches(reference_workdir, tmp_path):
    """`scu-unlearn` with the `retrain` method is checkpointed as training is: kill it after its
    second epoch's checkpoint, rerun the same command, and compare with an uninterrupted run."""
    trained = reference_workdir  # opened read-only by scu-unlearn

    def unlearn(workdir):
        return [sys.executable, "-m", "scu_jax.binaries.unlearn", SMOKE,
                "--config.unlearning.method=retrain", "--config.evaluation.mi_steps=0",
                f"--init_workdir={trained}", f"--workdir={workdir}"]

    reference = tmp_path / "reference"
    subprocess.run(unlearn(reference), cwd=REPO, env=_env(), check=True, capture_output=True)
    expected = json.loads((reference / "results.json").read_text())

    workdir = tmp_path / "killed"
    _kill_when(workdir, lambda w: len(_finished_steps(w, "retrain_checkpoints")) >= 2,
               command=unlearn(workdir))
    assert not (workdir / "results.json").exists()
    rerun = subprocess.run(unlearn(workdir), cwd=REPO, env=_env(), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    results = json.loads((workdir / "results.json").read_text())
    for name in METRICS:
        assert results[name] == pytest.approx(expected[name], abs=1e-6), name
    assert results["steps"] == expected["steps"]

"""SIGKILL a real training run at several points; the same command then finishes identically."""

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import said

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
    _signal_when(workdir, condition, signal.SIGKILL, command=command, timeout=timeout)


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


def _signal_when(workdir: pathlib.Path, condition, sig, *, times=1, command=None, timeout=240,
                 env=None):
    """Starts `command` (scu-train on `workdir`), sends `sig` `times` once `condition(workdir)`;
    returns the finished process's return code and stderr."""
    process = subprocess.Popen(command or _command(workdir), cwd=REPO, env=env or _env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while not condition(workdir):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail("the run ended before the signal point was reached")
        time.sleep(0.02)
    for _ in range(times):
        process.send_signal(sig)
        time.sleep(0.05)
    _, stderr = process.communicate(timeout=120)
    return process.returncode, stderr


def _in_full_disk(command):
    """`command` with every file it writes capped at 200 kB (RLIMIT_FSIZE; SIGXFSZ ignored, so a
    write past it fails with EFBIG): a disk that fills during the next checkpoint save."""
    cap = ("import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
           "resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000)); "
           "os.execv(sys.executable, [sys.executable] + sys.argv[1:])")
    return [sys.executable, "-c", cap, *command[1:]]


@pytest.mark.slow
def test_sigterm_saves_says_so_and_a_full_disk_then_the_rerun_resume_identically(uninterrupted,
                                                                                   tmp_path):
    """SIGTERM mid-training: the next epoch boundary is saved, one line says so, exit 143. The
    resumed run then meets a full disk at its next save: one line naming the latest complete
    checkpoint, exit 1, nothing lost. The run after that finishes with results bit-identical to
    an uninterrupted run's. Throughout: no traceback."""
    workdir = tmp_path / "run"
    code, stderr = _signal_when(workdir, lambda w: max(_finished_steps(w), default=0) >= 2,
                                signal.SIGTERM)
    lines = said(stderr)
    assert code == 143 and len(lines) == 1, stderr[-3000:]
    match = re.fullmatch(r"scu-train: error: interrupted by SIGTERM at epoch (\d+) of 7 \(train\): "
                         r"saved; the same command resumes", lines[0])
    assert match, lines
    saved_at = int(match.group(1))
    assert _finished_steps(workdir)[-1] == saved_at >= 2

    full = subprocess.run(_in_full_disk(_command(workdir)), cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=300)
    lines = said(full.stderr)
    assert full.returncode == 1 and len(lines) == 1, full.stderr[-3000:]
    assert lines[0] == (f"scu-train: error: cannot save a checkpoint in {workdir / 'checkpoints'}: "
                       f"File too large; the latest complete checkpoint is step {saved_at}, which "
                       "the same command resumes from")
    assert _finished_steps(workdir)[-1] == saved_at

    rerun = subprocess.run(_command(workdir), cwd=REPO, env=_env(), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    results = json.loads((workdir / "results.json").read_text())
    for name in (*METRICS, "steps", "model_sha256"):
        assert results[name] == uninterrupted[name], name  # bit for bit


@pytest.mark.slow
def test_a_second_signal_exits_at_once_keeping_the_last_checkpoint(tmp_path):
    workdir = tmp_path / "run"
    code, stderr = _signal_when(workdir, lambda w: len(_finished_steps(w)) >= 1, signal.SIGINT,
                                times=2)
    lines = said(stderr)
    assert code == 130 and lines[-1] == ("scu-train: SIGINT again: exiting now; the last complete "
                                        "checkpoint is kept"), stderr[-3000:]
    assert "Traceback" not in stderr
    from scu_jax.runs.checkpointing import Checkpoints
    checkpoints = Checkpoints(workdir, read_only=True)
    latest = checkpoints.latest_step()
    assert latest >= 1 and checkpoints.model_digest(latest)  # complete, with its digest


@pytest.mark.slow
def test_sigterm_during_an_unlearning_run_that_keeps_no_checkpoint_says_so(reference_workdir,
                                                                            tmp_path):
    """SCU keeps no checkpoint of its own (its runs take seconds): SIGTERM stops it at the next
    epoch boundary, one line says the same command reruns it, and nothing is written."""
    workdir = tmp_path / "scu"
    command = [sys.executable, "-m", "scu_jax.binaries.unlearn", SMOKE,
               "--config.unlearning.method=scu", "--config.unlearning.early_stop=False",
               "--config.unlearning.max_epochs=10000", "--config.evaluation.mi_steps=0",
               f"--init_workdir={reference_workdir}", f"--workdir={workdir}"]
    started = []

    def unlearning(w):  # the run's curves exist once it is set up; then a second of steps
        if (w / "summaries" / "scu").exists() and not started:
            started.append(time.monotonic())
        return bool(started) and time.monotonic() - started[0] > 1.0

    code, stderr = _signal_when(workdir, unlearning, signal.SIGTERM, command=command)
    lines = said(stderr)
    assert code == 143 and len(lines) == 1, stderr[-3000:]
    assert re.fullmatch(r"scu-unlearn: error: interrupted by SIGTERM at epoch \d+ of 10000 \(scu\): "
                        r"scu keeps no checkpoint of its own; the same command reruns it", lines[0])
    assert not (workdir / "results.json").exists() and not (workdir / "checkpoints").exists()

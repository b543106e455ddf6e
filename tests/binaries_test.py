"""The real `scu-train` binary in a subprocess: a smoke run, and bad input → one line, exit 2."""

import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
from conftest import said

from scu_jax.runs.checkpointing import Checkpoints

REPO = pathlib.Path(__file__).resolve().parent.parent
MNIST = str(REPO / "configs" / "mnist.py")


def _run(*args, timeout=300, binary="train", env_extra=None):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", f"scu_jax.binaries.{binary}", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, env=env)


def _tree_digest(root: pathlib.Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("bin") / "run"
    result = _run(f"--config={MNIST}:smoke", f"--workdir={workdir}")
    assert result.returncode == 0, result.stderr[-2000:]
    return workdir, result


@pytest.mark.slow
def test_smoke_run_writes_results_and_progress(trained):
    workdir, result = trained
    results = json.loads((workdir / "results.json").read_text())
    assert results["dataset"] == "mnist5k" and results["steps"] == (3 + 4) * 64  # smoke epochs
    assert 0.0 <= results["backdoor_accuracy"] <= 1.0
    progress = [line for line in result.stderr.splitlines() if "steps/s" in line]
    assert len(progress) >= 2 and all("ETA" in line and "loss" in line for line in progress)
    assert "orbax" not in result.stderr.lower() or "WARNING" in result.stderr  # quiet saves


BAD_INPUTS = [
    (["--config.dataset=imagenet"], "config.dataset='imagenet': must be one of"),
    (["--config.channel.name=laser"], "config.channel.name='laser': must be one of"),
    (["--config.no_such_field=1"], "no_such_field"),
    (["--config.erasure.edr=0.7"], "config.erasure.edr=0.7: must be a finite number in (0.0, 0.5]"),
    (["--config.erasure.edr=0"], "config.erasure.edr=0.0"),
    (["--config.channel.snr_db=nan"], "config.channel.snr_db=nan: must be a finite number"),
    (["--config.channel.snr_db=inf"], "config.channel.snr_db=inf"),
    (["--config.train.batch_size=0"], "config.train.batch_size=0: must be an integer in [1"),
    (["--config.train.batch_size=abc"], "batch_size"),
    (["extra_positional"], "unexpected arguments: extra_positional"),
    (["--config.parallel.devices=3"], "config.parallel.devices=3: only 1 cpu device(s) are visible"),
    (["--num_processes=2"], "--coordinator_address, --num_processes and --process_id go together"),
    (["--coordinator_address=127.0.0.1:1", "--num_processes=2", "--process_id=2",
      "--config.parallel.devices=0"], "--process_id=2: must be in [0, 2)"),
    (["--coordinator_address=127.0.0.1:1", "--num_processes=2", "--process_id=0"],
     "add --config.parallel.devices=0"),
    (["--coordinator_address=localhost", "--num_processes=1", "--process_id=0"],
     "--coordinator_address='localhost': must be HOST:PORT"),
    # The CE forget term needs the receiver's CE weight, or it is silently 0.
    (["--config.unlearning.erased_objective=ce"],
     "config.unlearning.erased_objective='ce': needs the receiver's CE term"),
    (["--config.channel.family=physical", "--config.channel.draw=scalar"],
     "config.channel.draw='scalar': 'scalar' is the reference's draw of the paper family"),
    (["--config.evaluation.channel=air"], "config.evaluation.channel='air': must be one of: none, train"),
]


@pytest.mark.slow
@pytest.mark.parametrize("extra,message", BAD_INPUTS)
def test_bad_input_is_one_line_exit_2(tmp_path, extra, message):
    workdir = tmp_path / "never"
    result = _run(f"--config={MNIST}:smoke", f"--workdir={workdir}", *extra)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("scu-train: error:"), result.stderr
    assert message in errors[0]
    assert not workdir.exists()  # nothing written


@pytest.mark.slow
@pytest.mark.parametrize("args,message", [
    (["--workdir=W"], "--config must have a value other than None"),
    (["--config=W/nope.py", "--workdir=W"], "No such file or directory"),
    ([f"--config={MNIST}:bogus", "--workdir=W"], "unknown config variant 'bogus'"),
    ([f"--config={MNIST}"], "--workdir must have a value other than None"),
])
def test_missing_or_broken_config_and_flags(tmp_path, args, message):
    result = _run(*[arg.replace("W", str(tmp_path / "w")) for arg in args])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("scu-train: error:") and message in last


@pytest.mark.slow
def test_workdir_of_another_configuration_is_refused_untouched(trained):
    workdir, _ = trained
    before = _tree_digest(workdir)
    result = _run(f"--config={MNIST}:smoke", f"--workdir={workdir}", "--config.channel.snr_db=12")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "holds a checkpoint of a different configuration" in result.stderr
    assert "config.channel.snr_db is 5.0 in the checkpoint but 12.0 now" in result.stderr
    assert _tree_digest(workdir) == before


@pytest.mark.slow
def test_unlearn_leaves_trained_checkpoint_byte_identical_and_evaluate_reads_it(trained, tmp_path):
    workdir, _ = trained
    before = _tree_digest(workdir)
    out = tmp_path / "scu"
    result = _run(f"--config={MNIST}:smoke", "--config.unlearning.method=scu",
                  "--config.evaluation.mi_steps=0", f"--init_workdir={workdir}",
                  f"--workdir={out}", binary="unlearn")
    assert result.returncode == 0, result.stderr[-2000:]
    assert _tree_digest(workdir) == before  # not one byte of the trained system changed
    results = json.loads((out / "results.json").read_text())
    assert results["method"] == "scu" and results["steps"] > 0
    assert results["unlearn_seconds"] > 0 and results["compile_seconds"] > 0

    metrics_file = tmp_path / "eval.json"
    evaluated = _run(f"--workdir={out}", f"--output={metrics_file}", "--probes",
                     f"--original_workdir={workdir}", binary="evaluate")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    printed = dict(line.split() for line in evaluated.stdout.splitlines() if len(line.split()) == 2)
    assert float(printed["backdoor_accuracy"]) == pytest.approx(results["backdoor_accuracy"], abs=1e-4)
    evaluated_metrics = json.loads(metrics_file.read_text())
    assert evaluated_metrics["method"] == "scu"
    # --probes: every probe of z and y at the config's five SNRs, CKA against the original.
    assert len([k for k in evaluated_metrics if k.startswith("probe_head_mlp_")
                and not k.endswith("_se")]) == 6
    assert 0.5 < evaluated_metrics["probe_cka_original_test"] < 1.0
    assert 0.0 <= float(printed["probe_knn_y0dB"]) <= 1.0
    refused = _run(f"--workdir={out}", f"--original_workdir={workdir}", binary="evaluate")
    assert refused.returncode == 2 and said(refused.stderr) == [
        "scu-evaluate: error: --original_workdir is read by the probes only: add --probes"]
    assert _tree_digest(workdir) == before
    # One model digest ties the result, its checkpoint and what scu-evaluate read back.
    assert evaluated_metrics["model_sha256"] == results["model_sha256"] == Checkpoints(
        out, read_only=True).model_digest()
    trained_results = json.loads((workdir / "results.json").read_text())
    assert trained_results["model_sha256"] == Checkpoints(workdir, read_only=True).model_digest()
    assert trained_results["model_sha256"] != results["model_sha256"]


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["flip", "manifest"])
def test_a_damaged_checkpoint_is_one_line_through_the_binary(trained, tmp_path, damage):
    """64 bytes flipped in the array data (which the checkpoint library reads without complaint)
    and a garbage manifest: exit 2, the one line, nothing after it, nothing changed."""
    workdir, _ = trained
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    step = copy / "checkpoints" / str(Checkpoints(copy, read_only=True).latest_step())
    if damage == "flip":
        data = max((p for p in (step / "state").rglob("d/*")), key=lambda p: p.stat().st_size)
        raw = bytearray(data.read_bytes())
        raw[len(raw) // 2:len(raw) // 2 + 64] = bytes(b ^ 0xFF for b in raw[len(raw) // 2:
                                                                         len(raw) // 2 + 64])
        data.write_bytes(bytes(raw))
    else:
        for manifest in (step / "state").rglob("manifest.ocdbt"):
            manifest.write_bytes(os.urandom(manifest.stat().st_size))
    before = _tree_digest(copy)
    result = _run(f"--workdir={copy}", binary="evaluate")
    assert result.returncode == 2
    lines = said(result.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"scu-evaluate: error: checkpoint {step} "), \
        result.stderr[-3000:]
    if damage == "flip":
        assert "does not hold what was saved" in lines[0]
    assert _tree_digest(copy) == before


UNLEARN_BAD_INPUTS = [
    (["--config.unlearning.method=forget_all"], "config.unlearning.method='forget_all': must be one of"),
    (["--config.unlearning.learning_rate=0"], "config.unlearning.learning_rate=0.0"),
    (["--config.unlearning.max_epochs=0"], "config.unlearning.max_epochs=0"),
    (["SAME"], "never written to"),
    (["EMPTY"], "holds no checkpoint"),
    (["OTHER"], "config.channel.snr_db is 5.0 in the checkpoint but 9.0 now"),
    (["FILE"], "exists and is not a directory"),
    (["UNDER_FILE"], "cannot be created:"),
]


@pytest.mark.slow
@pytest.mark.parametrize("extra,message", UNLEARN_BAD_INPUTS)
def test_unlearn_bad_input_is_one_line_exit_2(trained, tmp_path, extra, message):
    workdir, _ = trained
    init, out = str(workdir), str(tmp_path / "out")
    if extra == ["SAME"]:
        extra, out = [], str(workdir)
    elif extra == ["EMPTY"]:
        extra, init = [], str(tmp_path / "empty")
    elif extra == ["OTHER"]:
        extra = ["--config.channel.snr_db=9"]
    elif extra in (["FILE"], ["UNDER_FILE"]):
        (tmp_path / "out").write_text("a user's file")
        out = str(tmp_path / "out" / "run") if extra == ["UNDER_FILE"] else out
        extra = []
    before = _tree_digest(workdir)
    result = _run(f"--config={MNIST}:smoke", f"--init_workdir={init}", f"--workdir={out}", *extra,
                  binary="unlearn")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("scu-unlearn: error:") and message in last, last
    assert _tree_digest(workdir) == before
    if (tmp_path / "out").is_file():
        assert (tmp_path / "out").read_text() == "a user's file"


@pytest.mark.slow
@pytest.mark.parametrize("under", [False, True])
def test_train_workdir_that_is_or_sits_under_a_file_is_refused_before_any_work(tmp_path, under):
    blocker = tmp_path / "results"
    blocker.write_text("a user's file")
    workdir = blocker / "run" if under else blocker
    result = _run(f"--config={MNIST}:smoke", f"--workdir={workdir}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    expected = "cannot be created: " if under else "exists and is not a directory"
    assert last.startswith("scu-train: error: --workdir=") and expected in last, last
    assert "train receiver epoch" not in result.stderr  # refused before any work
    assert blocker.read_text() == "a user's file" and sorted(tmp_path.iterdir()) == [blocker]


def test_common_fail_prints_one_line_and_exits(capsys):
    from scu_jax.binaries import common

    with pytest.raises(SystemExit) as exit_info:
        common.fail("scu-x", "first line\nsecond   line")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "scu-x: error: first line second line\n"


def test_quiet_filter_drops_orbax_chatter_only():
    import logging

    from scu_jax.runs.logs import QuietLibraries

    quiet = QuietLibraries()

    def record(path, level, message):
        return logging.LogRecord("absl", level, path, 1, message, None, None)

    assert not quiet.filter(record("/x/orbax/checkpoint/a.py", logging.INFO, "Saving"))
    assert not quiet.filter(record("/x/orbax/a.py", logging.WARNING, "Given directory is read only=d"))
    assert quiet.filter(record("/x/orbax/a.py", logging.WARNING, "disk is full"))
    assert quiet.filter(record("/x/scu_jax/train.py", logging.INFO, "epoch 1"))


EDR_SWEEP = str(REPO / "configs" / "experiments" / "edr_sweep.py")
EXPERIMENT_BAD_INPUTS = [
    ([f"--config={EDR_SWEEP}:imagenet"], "unknown experiment config argument 'imagenet'"),
    ([f"--config={EDR_SWEEP}:smoke", "--config.grid.edr=(0.02,0.9)"],
     "config.grid.edr=(0.02, 0.9): must be numbers in (0, 0.5]"),
    ([f"--config={EDR_SWEEP}:smoke", "--config.grid.methods=('scu','forget_all')"],
     "config.grid.methods=('scu', 'forget_all'): must be distinct values from"),
    ([f"--config={EDR_SWEEP}:smoke", "--config.grid.seeds=(1,1)"], "config.grid.seeds=(1, 1)"),
    ([f"--config={EDR_SWEEP}:smoke", "--config.bases.mnist5k.channel.k_factor=-1"],
     "config.bases.mnist5k.channel.k_factor=-1.0: must be a finite number in [0.0"),
    ([f"--config={EDR_SWEEP}:smoke", "--workers=-2"], "--workers=-2: must be >= 0"),
    ([f"--config={EDR_SWEEP}:smoke", "NOT_AN_EXPERIMENT"], "exists and is not an experiment directory"),
    ([f"--config={EDR_SWEEP}:smoke", "--shard=3/3"], "--shard='3/3': must be i/n with integers 0 <= i < n"),
    # A SLURM array task's variables (tests/shards_test.py: an explicit --shard wins over them).
    ([f"--config={EDR_SWEEP}:smoke", "SLURM:4/4"], "SLURM_ARRAY_TASK_ID='4', SLURM_ARRAY_TASK_COUNT='4'"),
]


@pytest.mark.slow
@pytest.mark.parametrize("extra,message", EXPERIMENT_BAD_INPUTS)
def test_experiment_bad_input_is_one_line_exit_2(tmp_path, extra, message):
    workdir = tmp_path / "sweep"
    if "NOT_AN_EXPERIMENT" in extra:
        extra = [arg for arg in extra if arg != "NOT_AN_EXPERIMENT"]
        workdir.mkdir()
        (workdir / "notes.txt").write_text("mine")
    slurm = {}
    for arg in (arg for arg in extra if arg.startswith("SLURM:")):
        task_id, count = arg.removeprefix("SLURM:").split("/")
        slurm = {"SLURM_ARRAY_TASK_ID": task_id, "SLURM_ARRAY_TASK_COUNT": count}
    extra = [arg for arg in extra if not arg.startswith("SLURM:")]
    before = _tree_digest(tmp_path)
    result = _run(*extra, f"--workdir={workdir}", binary="experiment", env_extra=slurm)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("scu-experiment: error:") and message in last, last
    assert _tree_digest(tmp_path) == before  # nothing written, nothing removed


@pytest.mark.slow
def test_report_of_a_non_experiment_directory_is_one_line_exit_2(tmp_path):
    result = _run(f"--workdir={tmp_path}", binary="report")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("scu-report: error:") and "not an scu-experiment directory" in last


@pytest.mark.slow
def test_overwrite_replaces_the_other_run_and_nothing_else(trained, tmp_path):
    import shutil

    workdir = tmp_path / "run"
    shutil.copytree(trained[0], workdir)
    (workdir / "notes.txt").write_text("mine")
    result = _run(f"--config={MNIST}:smoke", f"--workdir={workdir}", "--config.channel.snr_db=12",
                  "--config.train.epochs=1", "--config.evaluation.mi_steps=0", "--overwrite")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (workdir / "notes.txt").read_text() == "mine"
    saved = json.loads(max((workdir / "checkpoints").iterdir(), key=lambda p: int(p.name))
                       .joinpath("config", "metadata").read_text())
    assert saved["training"]["channel"]["snr_db"] == 12.0

    out = tmp_path / "unlearned"
    common = [f"--config={MNIST}:smoke", "--config.evaluation.mi_steps=0", f"--init_workdir={trained[0]}",
              f"--workdir={out}"]
    assert _run(*common, "--config.unlearning.method=vbu", binary="unlearn").returncode == 0
    # (Without --overwrite this is refused: tests/unlearning_test.py checks that in-process.)
    replaced = _run(*common, "--config.unlearning.method=scu", "--overwrite", binary="unlearn")
    assert replaced.returncode == 0, replaced.stderr[-2000:]
    assert json.loads((out / "results.json").read_text())["method"] == "scu"

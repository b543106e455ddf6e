"""`scu-forget`: sequential forget requests, the ledger, kills at the named fault points, --verify.

One smoke system trained on the clean set serves the module; each test that writes works on a
copy of the two-request deployment.
"""

import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import made_once

from scu_jax import errors
from scu_jax.runs import deployment as deployments
from scu_jax.runs import ledger, versions
from scu_jax.runs.checkpointing import Checkpoints

REPO = pathlib.Path(__file__).resolve().parent.parent
SMOKE = f"--config={REPO / 'configs' / 'mnist.py'}:smoke"
NUM_TRAIN = 1024  # the smoke config's training split
FIELDS = {"record", "request_id", "sha256", "count", "remain_count", "kind", "method", "stop_rule",
          "stopped_by", "steps", "epochs", "before", "after", "unlearn_seconds",
          "compile_seconds", "wall_seconds", "version", "parent_version", "coalesced_with", "time",
          "model_sha256", "previous_sha256"}
METRICS = {"mse_erased", "accuracy_erased", "mse_remain", "accuracy_remain", "mse_test",
           "accuracy_test", "mse_heldout", "accuracy_heldout", "erased_to_heldout"}


def _env(**extra):
    return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO), **extra}


def _command(*args, binary="forget"):
    return [sys.executable, "-m", f"scu_jax.binaries.{binary}", *map(str, args)]


def _run(*args, timeout=300, **env):
    return subprocess.run(_command(*args), cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=_env(**env))


def _write(path: pathlib.Path, ids) -> pathlib.Path:
    path.write_text("".join(f"{i}\n" for i in ids))
    return path


def _ledger(deployment: pathlib.Path) -> list[dict]:
    # Line by line: a half-written line would fail here.
    return [json.loads(line) for line in (deployment / "ledger.jsonl").read_text().splitlines()]


def _error_line(result, program="scu-forget") -> str:
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith(f"{program}: error:"), result.stderr[-2000:]
    return errors[0]


def _make_two_requests(root: pathlib.Path) -> str:
    """A smoke system trained on the clean set (`root/trained`), then a deployment of it after
    two sequential requests (`root/deployment`, versions 1 and 2); returns the requests' output."""
    trained = root / "trained"
    result = subprocess.run(_command(SMOKE, "--config.forget.kind=ids", f"--workdir={trained}",
                                     binary="train"),
                            cwd=REPO, capture_output=True, text=True, timeout=300, env=_env())
    assert result.returncode == 0, result.stderr[-2000:]
    files = [_write(root / "r1.txt", [10, 3, 7, 500]),
             _write(root / "r2.txt", [20, 21, 22, 23, 24])]
    # Two files in one command: two requests, applied one after the other.
    result = _run(f"--deployment={root / 'deployment'}", f"--init_workdir={trained}",
                  f"--ids={files[0]},{files[1]}")
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Made once per test run (`conftest.made_once`) and never written to by tests."""
    return made_once(tmp_path_factory, "two_requests", _make_two_requests)


@pytest.fixture(scope="module")
def trained(made):
    return made[0] / "trained"


@pytest.fixture(scope="module")
def two_requests(made):
    """The deployment, its two request files and the command's stdout."""
    root, stdout = made
    return root / "deployment", [root / "r1.txt", root / "r2.txt"], stdout


@pytest.mark.slow
def test_two_sequential_requests_make_two_versions_and_ledger_lines(two_requests, trained):
    deployment, files, stdout = two_requests
    records = _ledger(deployment)
    assert [r["record"] for r in records] == ["init", "request", "request"]
    assert records[0]["version"] == 0 and records[0]["source"] == str(trained.resolve())
    assert records[0]["data"]["num_train"] == NUM_TRAIN
    r1, r2 = records[1:]
    assert set(r1) == FIELDS and set(r2) == FIELDS
    assert (r1["request_id"], r1["version"], r1["parent_version"]) == ("r1", 1, 0)
    assert (r2["request_id"], r2["version"], r2["parent_version"]) == ("r2", 2, 1)
    assert (r1["count"], r2["count"]) == (4, 5)
    # D_r of the second request leaves out the first request's samples as well as its own.
    assert (r1["remain_count"], r2["remain_count"]) == (NUM_TRAIN - 4, NUM_TRAIN - 4 - 5)
    for record, path in zip((r1, r2), files):
        shell = subprocess.run(f"sort -n {path} | sha256sum", shell=True, capture_output=True,
                               text=True, check=True)
        assert record["sha256"] == shell.stdout.split()[0]
        assert set(record["before"]) == METRICS and set(record["after"]) == METRICS
        assert record["after"]["erased_to_heldout"] == pytest.approx(
            record["after"]["mse_erased"] / record["after"]["mse_heldout"])
        assert record["kind"] == "ids" and record["method"] == "scu"
        assert record["coalesced_with"] == [] and record["steps"] >= 1
        assert record["stopped_by"] in ("gap", "max_epochs")
        assert 0 < record["unlearn_seconds"] < record["wall_seconds"]
    assert versions.on_disk(deployment) == [0, 1, 2]
    # The versions hold the requests' ids, and version 2 was trained on from version 1.
    assert versions.metadata(deployment, 2)["requests"][0]["ids"] == [20, 21, 22, 23, 24]
    assert versions.metadata(deployment, 1)["requests"][0]["ids"] == [3, 7, 10, 500]
    out = stdout.splitlines()
    assert len(out) == 3 and out[0].startswith("request r1: 4 samples, version 1, scu stopped by ")
    assert out[1].startswith("request r2: 5 samples, version 2, scu stopped by ")
    assert "MSE erased" in out[0] and out[2] == f"ledger: {deployment / 'ledger.jsonl'}"


@pytest.mark.slow
def test_bad_input_through_the_binary_is_one_line_exit_2(two_requests, trained, tmp_path):
    deployment, (r1, _), _ = two_requests
    before = (deployment / "ledger.jsonl").read_bytes()
    backdoor = tmp_path / "backdoor"
    shutil.copytree(trained, backdoor)
    for meta_path in backdoor.glob("checkpoints/*/config/metadata"):
        meta = json.loads(meta_path.read_text())
        del meta["training"]["training_set"]  # what a backdoor-trained system's fingerprint lacks
        meta_path.write_text(json.dumps(meta))
    (tmp_path / "words.txt").write_text("1\nseven\n")
    cases = {
        "again": ([f"--deployment={deployment}", f"--ids={r1}"],
                  "request 'r1' was already applied by version 1"),
        "words": ([f"--deployment={deployment}", f"--ids={tmp_path / 'words.txt'}"],
                  "line 2: 'seven' is not a sample index"),
        "training_field": ([f"--deployment={deployment}", SMOKE, "--config.train.epochs=9",
                            f"--ids={r1}"], "config.train.epochs is 4 in the deployment but 9"),
        "backdoor": ([f"--deployment={tmp_path / 'new'}", f"--init_workdir={backdoor}",
                      f"--ids={r1}"], "was trained on the backdoor protocol's data"),
        "two_kinds": ([f"--deployment={deployment}", "--class_id=1", "--worst_case=5"],
                      "name the request with one of --ids, --class_id, --random_fraction, "
                      "--worst_case (got --class_id, --worst_case)"),
    }
    # Started together: each refuses before any work, so most of its time is the imports.
    calls = {name: subprocess.Popen(_command(*args), cwd=REPO, env=_env(), text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for name, (args, _) in cases.items()}
    for name, process in calls.items():
        stdout, stderr = process.communicate(timeout=300)
        result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
        assert result.returncode == 2, (name, stderr[-2000:])
        assert cases[name][1] in _error_line(result), name
    assert (deployment / "ledger.jsonl").read_bytes() == before
    assert versions.on_disk(deployment) == [0, 1, 2]
    assert not (tmp_path / "new").exists()


ERASED = {3, 7, 10, 500, 20, 21, 22, 23, 24}  # by r1 and r2


@pytest.mark.slow
@pytest.mark.parametrize("ids,message", [
    ([1, NUM_TRAIN], f"index {NUM_TRAIN} is out of range"),
    ([5, 6, 5], "names sample 5 twice"),
    ([], "names no sample"),
    ([3, 600], "1 of its samples were erased by an earlier request (first: 3)"),
    ([24, 20, 21, 22, 23], "names the same samples (sha256 "),  # r2's set under another name
    (sorted(set(range(NUM_TRAIN)) - ERASED), "would erase every training sample"),
])
def test_bad_request_files_are_refused_in_one_line_before_any_work(two_requests, tmp_path, ids,
                                                                     message):
    """What the binary turns into one line and exit 2 (`ValueError`; the test above runs it)."""
    deployment, _, _ = two_requests
    before = (deployment / "ledger.jsonl").read_bytes()
    opened = deployments.open_deployment(deployment)
    with pytest.raises(ValueError) as refused:
        request = deployments.ids_request(opened, str(_write(tmp_path / "bad.txt", ids)))
        ledger.apply_to(opened, [request])
    assert message in str(refused.value) and "\n" not in str(refused.value)
    assert (deployment / "ledger.jsonl").read_bytes() == before
    assert versions.on_disk(deployment) == [0, 1, 2]


@pytest.mark.slow
def test_class_and_random_requests_draw_from_the_samples_not_yet_erased(two_requests):
    deployment, _, _ = two_requests
    opened = deployments.open_deployment(deployment)
    erased_class = int(opened.labels[3])  # r1 erased sample 3
    request = deployments.class_request(opened, erased_class)
    assert request.request_id == f"class-{erased_class}" and request.kind == "class"
    everything = np.flatnonzero(opened.labels == erased_class)
    assert set(request.ids) == set(everything) - ERASED and len(request.ids) < len(everything)
    request = deployments.random_request(opened, 0.01, seed=5)
    assert request.request_id == "random-0.01-5" and len(request.ids) == round(0.01 * NUM_TRAIN)
    assert not set(request.ids) & ERASED
    assert np.array_equal(request.ids, deployments.random_request(opened, 0.01, seed=5).ids)
    with pytest.raises(ValueError, match="class 10 is not one of the 10 classes"):
        deployments.class_request(opened, 10)
    with pytest.raises(ValueError, match=r"must lie in \(0, 1\)"):
        deployments.random_request(opened, 1.5)
    with pytest.raises(ValueError, match="request 'r2' was already applied by version 2"):
        deployments.class_request(opened, 0, request_id="r2")
    # A red-team request: the samples hardest to forget on version 2, none erased before.
    request = deployments.worst_case_request(opened, 5, seed=0, iterations=3)
    assert request.request_id == "worst-case-5-0" and request.kind == "ids"
    assert len(request.ids) == 5 and not set(request.ids) & ERASED
    assert np.array_equal(request.ids, deployments.worst_case_request(opened, 5, iterations=3).ids)
    with pytest.raises(ValueError, match="worst-case set size 0: must be a count"):
        deployments.worst_case_request(opened, 0)


@pytest.mark.slow
def test_coalesced_requests_make_one_version(trained, tmp_path):
    """Through the library function a benchmark calls (the binary runs the same code)."""
    deployment = tmp_path / "coalesced"
    records = ledger.apply_requests(
        deployment, [("c1", np.array([40, 41, 42, 43]), "ids"), ("c2", np.arange(50, 55), "ids")],
        method="scu", coalesce=True, init_workdir=str(trained),
        config_overrides={"evaluation.mi_steps": 0})
    assert records == _ledger(deployment)[1:]
    c1, c2 = records
    assert (c1["version"], c2["version"]) == (1, 1) and c1["parent_version"] == 0
    assert c1["coalesced_with"] == ["c2"] and c2["coalesced_with"] == ["c1"]
    assert (c1["count"], c2["count"]) == (4, 5)
    assert c1["remain_count"] == c2["remain_count"] == NUM_TRAIN - 9  # one run on the union
    assert c1["after"] == c2["after"] and c1["steps"] == c2["steps"]
    assert versions.on_disk(deployment) == [0, 1]
    opened = deployments.open_deployment(deployment)
    assert sorted(opened.erased) == ["c1", "c2"] and len(opened.erased_union()) == 9


def _after_kill(deployment: pathlib.Path, ledger_bytes: bytes, current: int) -> set[str]:
    """The state a kill must leave: the ledger as it was, whole lines, `current` current."""
    assert (deployment / "ledger.jsonl").read_bytes() == ledger_bytes
    assert _ledger(deployment)[-1]["version"] == current
    return {p.name for p in (deployment / "versions").iterdir()}


@pytest.mark.slow
def test_sigkill_at_each_fault_point_then_rerun_completes(two_requests, tmp_path):
    """One command of two requests (r3, r4) is killed at "unlearning" (r3's), rerun and killed at
    "save" (r3's), rerun and killed at the second "ledger" append (r4's, once r3 is in the
    ledger), then rerun without a fault point: each rerun redoes what its kill lost; the last
    one skips r3 and reuses the version the kill had saved for r4."""
    source, _, _ = two_requests
    deployment = tmp_path / "deployment"
    shutil.copytree(source, deployment)
    ledger_bytes = (deployment / "ledger.jsonl").read_bytes()
    files = [_write(tmp_path / "r3.txt", [30, 31, 32]), _write(tmp_path / "r4.txt", [40, 41])]
    command = (f"--deployment={deployment}", f"--ids={files[0]},{files[1]}")

    killed = _run(*command, SCU_JAX_FAULT_POINT="unlearning")
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert "unlearning epoch" in killed.stderr  # killed after the method's steps
    assert _after_kill(deployment, ledger_bytes, 2) == {"0", "1", "2"}

    killed = _run(*command, SCU_JAX_FAULT_POINT="save")
    assert killed.returncode == -9, killed.stderr[-2000:]
    leftovers = _after_kill(deployment, ledger_bytes, 2)
    staging = [name for name in leftovers if name.startswith(".staging-3-")]
    assert len(leftovers) == 4 and len(staging) == 1

    killed = _run(*command, SCU_JAX_FAULT_POINT="ledger:2")
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert f"removing {deployment / 'versions' / staging[0]}" in killed.stderr
    assert "request r3: 3 samples, version 3" in killed.stderr  # the log line of an applied one
    ledger_bytes += (deployment / "ledger.jsonl").read_bytes()[len(ledger_bytes):]
    assert _after_kill(deployment, ledger_bytes, 3) == {"0", "1", "2", "3", "4"}
    assert any(p.name.startswith(".ledger.") for p in deployment.iterdir())  # the temporary ledger
    saved = {p: p.stat().st_mtime_ns for p in (deployment / "versions" / "4").rglob("*")}

    rerun = _run(*command)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "requests r3 were applied by an earlier run of this command" in rerun.stderr
    assert "reusing version 4, saved for this request by an interrupted run" in rerun.stderr
    assert "unlearning epoch" not in rerun.stderr  # nothing recomputed
    assert {p: p.stat().st_mtime_ns for p in saved} == saved
    records = _ledger(deployment)
    assert [r.get("request_id") for r in records] == [None, "r1", "r2", "r3", "r4"]
    assert [r["version"] for r in records] == [0, 1, 2, 3, 4]
    assert [r["parent_version"] for r in records[1:]] == [0, 1, 2, 3]
    assert records[-1]["remain_count"] == NUM_TRAIN - 9 - 3 - 2
    assert sorted(p.name for p in (deployment / "versions").iterdir()) == ["0", "1", "2", "3", "4"]
    assert not any(p.name.startswith(".ledger.") for p in deployment.iterdir())
    assert rerun.stdout.startswith("request r4: 2 samples, version 4")


@pytest.mark.slow
def test_verify_reports_the_numbers_and_catches_a_tampered_ledger(two_requests, tmp_path):
    source, files, _ = two_requests
    output = tmp_path / "verify.json"
    result = _run(f"--deployment={source}", "--verify", f"--output={output}")
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    assert summary == json.loads(output.read_text())
    assert (summary["current_version"], summary["requests"]) == (2, ["r1", "r2"])
    assert summary["count_erased"] == 9
    union = sorted(int(line) for f in files for line in f.read_text().split())
    assert summary["sha256_erased"] == hashlib.sha256(
        "".join(f"{i}\n" for i in union).encode()).hexdigest()
    assert set(summary["metrics"]) == METRICS
    assert all(np.isfinite(v) and v >= 0 for v in summary["metrics"].values())
    records = _ledger(source)
    assert [r["after"] for r in summary["per_request"]] == [r["after"] for r in records[1:]]
    # What an auditor ties a deletion to a model with: per version, its requests, the digest of
    # the samples it erased and of its model (recomputed from the arrays), and the chain's head.
    lines = (source / "ledger.jsonl").read_text().splitlines()
    assert summary["ledger_head_sha256"] == hashlib.sha256(lines[-1].encode()).hexdigest()
    assert summary["chained"] is True
    assert [v["version"] for v in summary["versions"]] == [0, 1, 2]
    assert [v["requests"] for v in summary["versions"]] == [[], ["r1"], ["r2"]]
    assert [v["model_sha256"] for v in summary["versions"]] == [r["model_sha256"] for r in records]
    assert [v["sha256_erased"] for v in summary["versions"]] == [None] + [
        r["sha256"] for r in records[1:]]

    tampered = tmp_path / "tampered"
    shutil.copytree(source, tampered)
    lines = (tampered / "ledger.jsonl").read_text().splitlines()
    last = json.loads(lines[-1])
    last["version"] = 1  # the ledger now says version 1 applied r2 as well
    (tampered / "ledger.jsonl").write_text("\n".join([*lines[:-1], json.dumps(last)]) + "\n")
    bad = _run(f"--deployment={tampered}", "--verify")
    assert bad.returncode == 1
    assert "version 1 on disk applied" in _error_line(bad)


@pytest.mark.slow
def test_the_ledger_chains_its_records_and_binds_each_version_to_its_model(two_requests, trained):
    deployment, _, _ = two_requests
    lines = (deployment / "ledger.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert records[0]["previous_sha256"] is None
    for previous, record in zip(lines, records[1:]):
        assert record["previous_sha256"] == hashlib.sha256(previous.encode()).hexdigest()
    # Version 0 is the trained system itself, and says so.
    assert records[0]["model_sha256"] == records[0]["source_model_sha256"] == Checkpoints(
        trained, read_only=True).model_digest()
    for record in records:
        meta = versions.metadata(deployment, record["version"])
        assert meta["digests"]["model"] == record["model_sha256"]
        assert meta["records"] == [record]
        assert versions.recorded(deployment, record["version"])
    assert len({r["model_sha256"] for r in records}) == 3  # three different models


def _edit_line(number, change):
    def edit(deployment):
        lines = (deployment / "ledger.jsonl").read_text().splitlines()
        record = json.loads(lines[number - 1])
        change(record)
        lines[number - 1] = json.dumps(record, sort_keys=True)
        (deployment / "ledger.jsonl").write_text("\n".join(lines) + "\n")
    return edit


def _lines(order):
    def reorder(deployment):
        lines = (deployment / "ledger.jsonl").read_text().splitlines()
        (deployment / "ledger.jsonl").write_text("\n".join(lines[i] for i in order) + "\n")
    return reorder


def _replace_version(part):
    def replace(deployment):
        source, target = (deployment / "versions" / "1" / part, deployment / "versions" / "2" / part)
        shutil.rmtree(target)
        shutil.copytree(source, target)
    return replace


TAMPERING = {
    "a middle record edited": (_edit_line(2, lambda r: r["after"].update(mse_erased=1.0)),
                               "line 3: its previous_sha256 is not the sha256 of line 2"),
    "records reordered": (_lines([0, 2, 1]), "line 2: its previous_sha256 is not the sha256"),
    "a middle record removed": (_lines([0, 2]), "line 2: its previous_sha256 is not the sha256"),
    "the chain removed from a record": (_edit_line(3, lambda r: r.pop("previous_sha256")),
                                        "line 3 has no previous_sha256 after chained records"),
    "the last record edited": (_edit_line(3, lambda r: r.update(count=4)),
                               "the ledger's record of version 2 is not the one saved with"),
    "the last record removed": (_lines([0, 1]), "the ledger ends at version 1, but version 2 was "
                                                "recorded in it: the ledger was cut short"),
    "a version replaced by another": (_replace_version(""), "version 2 on disk applied"),
    "a version's arrays replaced by another's": (_replace_version("0/state"),
                                                 "does not hold what was saved"),
}


@pytest.mark.slow
@pytest.mark.parametrize("tampering", list(TAMPERING))
def test_each_tampering_is_refused_and_reported_by_verify(two_requests, tmp_path, tampering):
    source, _, _ = two_requests
    deployment = tmp_path / "deployment"
    shutil.copytree(source, deployment)
    damage, expected = TAMPERING[tampering]
    damage(deployment)
    before = {str(p): p.read_bytes() for p in deployment.rglob("*") if p.is_file()}
    with pytest.raises(errors.LedgerMismatchError) as error:
        ledger.verify(deployment)
    assert expected in str(error.value) and "\n" not in str(error.value), str(error.value)
    assert {str(p): p.read_bytes() for p in deployment.rglob("*") if p.is_file()} == before


@pytest.mark.slow
def test_a_cut_ledger_is_refused_by_a_request_too(two_requests, tmp_path):
    source, _, _ = two_requests
    deployment = tmp_path / "deployment"
    shutil.copytree(source, deployment)
    _lines([0, 1])(deployment)
    before = {str(p): p.read_bytes() for p in deployment.rglob("*") if p.is_file()}
    result = _run(f"--deployment={deployment}", f"--ids={_write(tmp_path / 'r9.txt', [90, 91])}")
    assert result.returncode == 1
    assert "the ledger was cut short" in _error_line(result)
    assert {str(p): p.read_bytes() for p in deployment.rglob("*") if p.is_file()} == before

"""Shards of a sweep: the partition (deterministic, disjoint, whole groups, balanced), --shard and
SLURM's variables, the locks, the merge of every shard's rows, and three shard processes whose
merged rows equal one unsharded run's."""

import csv
import json
import os
import pathlib
import subprocess
import sys

import pytest

from scu_jax.experiments.grid import expand
from scu_jax.experiments.report import merged_rows, write_report
from scu_jax.experiments.rows import read_rows
from scu_jax.experiments.scheduler import run_experiment
from scu_jax.experiments.shards import (Shard, parse_shard, partition, shard_cells,
                                        shard_from_environment)
from scu_jax.experiments.sweeps import experiment_config
from scu_jax.experiments.tasks import TaskGraph
from scu_jax.experiments.workdir import (CSV_FILE, EXPERIMENT_FILE, ROWS_FILE,
                                         check_experiment_dir, exclusive, exclusive_shard,
                                         rows_file)

REPO = pathlib.Path(__file__).resolve().parent.parent
EDR_SWEEP = REPO / "configs" / "experiments" / "edr_sweep.py"


@pytest.mark.parametrize("name,count", [("snr_sweep", 4), ("edr_sweep", 3), ("beta_sweep", 7),
                                        ("edr_sweep", 20)])
def test_partition_is_deterministic_disjoint_complete_whole_groups_and_balanced(name, count):
    cells = expand(experiment_config(name))
    shards = partition(cells, count)
    assert shards == partition(expand(experiment_config(name)), count)  # any machine, same split
    owned = [cell for shard in shards for cell in shard]
    assert sorted(c.id for c in owned) == sorted(c.id for c in cells) and len(owned) == len(cells)
    for shard in shards:  # each in grid order
        assert shard == [cell for cell in cells if cell in shard]
    owner = {}
    for index, shard in enumerate(shards):
        for cell in shard:
            assert owner.setdefault(cell.group, index) == index, cell.id  # whole groups
    # The sweeps' groups are all the same size: shard sizes differ by at most one group.
    group_size = len(cells) // len(owner)
    sizes = [len(shard) for shard in shards]
    assert max(sizes) - min(sizes) <= group_size
    assert sum(1 for size in sizes if size) == min(count, len(owner))  # empty only when n > groups
    assert [shard_cells(cells, Shard(i, count)) for i in range(count)] == shards


def test_every_task_that_writes_shared_state_has_one_owner():
    config = experiment_config("edr_sweep")
    cells = expand(config)
    written: dict[str, int] = {}  # directory → the shard whose task writes it
    for index, mine in enumerate(partition(cells, 4)):
        graph = TaskGraph.plan(config, pathlib.Path("/shared"), mine)
        for task in graph.tasks.values():
            directory = task["train_dir"] if task["kind"] == "train" else task["out_dir"]
            assert directory not in written, (directory, written.get(directory), index)
            written[directory] = index
            # What a cell reads (its group's training and retraining) is its own shard's.
            for read in (task["train_dir"], task.get("reference_dir")):
                assert read is None or written.get(read, index) == index
    # One training per group (15) and one output per cell (150), each written once.
    assert len(written) == 15 + 150


@pytest.mark.parametrize("text,shard", [("0/1", Shard(0, 1)), ("3/4", Shard(3, 4)),
                                        (" 2 / 5 ", Shard(2, 5))])
def test_parse_shard(text, shard):
    assert parse_shard(text) == shard and str(shard) == f"{shard.index}/{shard.count}"


@pytest.mark.parametrize("text", ["4/4", "-1/4", "0/0", "1", "a/b", "1/2/3", "", "1.0/2"])
def test_parse_shard_refuses_anything_but_i_of_n(text):
    with pytest.raises(ValueError, match=r"--shard=.*must be i/n with integers 0 <= i < n"):
        parse_shard(text)


@pytest.mark.parametrize("environ,shard", [
    ({}, None),
    ({"SLURM_ARRAY_TASK_ID": "2"}, None),  # not an array job without a count
    ({"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "4"}, Shard(2, 4)),
    ({"SLURM_ARRAY_TASK_ID": "12", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "10"},
     Shard(2, 4)),
])
def test_shard_from_slurm_environment(environ, shard):
    assert shard_from_environment(environ) == shard


@pytest.mark.parametrize("environ", [
    {"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "4"},
    {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "2"},
    {"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "4"},
    {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "0"},
])
def test_bad_slurm_environment_names_its_variables(environ):
    with pytest.raises(ValueError, match=r"^SLURM_ARRAY_TASK_ID='.*': the shard i = TASK_ID"):
        shard_from_environment(environ)


def _write_rows(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_rows_of_every_file_merge_in_grid_order_and_a_repeated_cell_is_refused(tmp_path):
    _write_rows(tmp_path / ROWS_FILE, [{"cell": "c", "x": 3}])
    _write_rows(tmp_path / rows_file(Shard(1, 2)), [{"cell": "b", "x": 2}, {"cell": "z", "x": 9}])
    (tmp_path / rows_file(Shard(0, 2))).write_text(json.dumps({"cell": "a", "x": 1}) + "\n{cut")
    assert [r["x"] for r in read_rows(tmp_path, order=["a", "b", "c"])] == [1, 2, 3, 9]
    assert [r["x"] for r in read_rows(tmp_path)] == [3, 1, 2, 9]  # files: unsharded, then shards
    # A shard repairs its own file only.
    read_rows(tmp_path, repair=True, shard=Shard(1, 2))
    assert (tmp_path / rows_file(Shard(0, 2))).read_text().endswith("{cut")
    read_rows(tmp_path, repair=True, shard=Shard(0, 2))
    assert (tmp_path / rows_file(Shard(0, 2))).read_text().count("\n") == 1

    _write_rows(tmp_path / rows_file(Shard(0, 3)), [{"cell": "b", "x": 2}])
    with pytest.raises(ValueError, match=r"^cell b has rows in both .*results.shard-1-of-2.jsonl "
                                         r"and .*results.shard-0-of-3.jsonl; delete one"):
        read_rows(tmp_path)


def test_locks_shards_side_by_side_but_not_twice_nor_beside_other_counts_or_unsharded(tmp_path):
    with exclusive_shard(tmp_path, Shard(0, 3)), exclusive_shard(tmp_path, Shard(1, 3)):
        with pytest.raises(FileExistsError, match=r"shard 0/3 is already running in"):
            with exclusive_shard(tmp_path, Shard(0, 3)):
                pass
        with pytest.raises(FileExistsError, match=r"shards of another count \(3\) are running"):
            with exclusive_shard(tmp_path, Shard(0, 2)):
                pass
        with pytest.raises(FileExistsError, match="another scu-experiment is running in"):
            with exclusive(tmp_path):
                pass
    with exclusive(tmp_path):
        with pytest.raises(FileExistsError, match="an unsharded scu-experiment is running in"):
            with exclusive_shard(tmp_path, Shard(2, 3)):
                pass
    with exclusive_shard(tmp_path, Shard(0, 2)):  # every lock released
        pass


def test_a_workdir_another_shard_is_creating_is_not_refused(tmp_path):
    config = experiment_config("edr_sweep", "smoke")
    # What a shard that started a moment earlier holds before its experiment.json is renamed in.
    for name in (".lock", ".lock.experiment", ".lock.shard-0-of-3", ".experiment.1f2e.tmp.json"):
        (tmp_path / name).write_text("")
    assert check_experiment_dir(tmp_path, config, overwrite=False) == tmp_path
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="is not an experiment directory"):
        check_experiment_dir(tmp_path, config, overwrite=False)


def test_overwrite_with_a_shard_is_refused_before_anything_is_written(tmp_path):
    workdir = tmp_path / "sweep"
    with pytest.raises(ValueError, match=r"--overwrite with shard 0/2: it would delete the other "
                                         "shards' results"):
        run_experiment(experiment_config("edr_sweep", "smoke"), workdir, workers=0,
                       overwrite=True, shard=Shard(0, 2))
    assert not workdir.exists()


# Three groups of one cell each (the original system's evaluation), trained for one epoch: the
# smallest sweep that gives each of three shards a group. Its systems have the smoke sweep's
# shapes (tests/experiment_test.py), so a session that ran it compiles nothing here.
TINY = {"grid.methods": ("original",), "grid.edr": (0.04,), "grid.seeds": (0, 1, 2),
        "bases.mnist5k.train.epochs": 1, "bases.mnist5k.train.receiver_epochs": 1}
# Columns that differ between two runs of the same cells: wall times and dates.
_TIMED = ("seconds", "finished_at", "started")


def _tiny_config():
    config = experiment_config("edr_sweep", "smoke")
    for path, value in TINY.items():
        *parents, field = path.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[field] = value
    return config


def _untimed(row):
    return {key: value for key, value in row.items() if not any(t in key for t in _TIMED)}


@pytest.mark.slow
def test_three_shard_processes_merge_into_the_rows_of_one_unsharded_run(tmp_path, cache_dir):
    unsharded = tmp_path / "unsharded"
    reference = run_experiment(_tiny_config(), unsharded, workers=0, compilation_cache=cache_dir)
    assert (reference.cells, reference.ran) == (3, 3)

    shared = tmp_path / "shared"
    command = [sys.executable, "-m", "scu_jax.binaries.experiment", f"--config={EDR_SWEEP}:smoke",
               *(f"--config.{path}={value!r}" for path, value in TINY.items()),
               f"--workdir={shared}", "--workers=0", f"--compilation_cache={cache_dir}"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    # Shard 2 as a SLURM array task (ids 5-7) finds it; shards 0 and 1 by flag, which wins over
    # the same variables (else two processes would run shard 2, and one would be refused).
    env = {**env, "SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "5",
           "SLURM_ARRAY_TASK_COUNT": "3"}
    processes = [subprocess.Popen([*command, *shard], cwd=REPO, env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for shard in (["--shard=0/3"], ["--shard=1/3"], [])]
    for index, process in enumerate(processes):
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-2000:]
        assert f"shard {index}/3: 1 cells run, 0 already finished, of 1;" in out, out
        assert f"scu-report --workdir={shared}" in out
    for index in range(3):  # each shard wrote its own rows file, one row each
        assert len((shared / rows_file(Shard(index, 3))).read_text().splitlines()) == 1
    assert not (shared / ROWS_FILE).exists() and not (shared / CSV_FILE).exists()
    runs = json.loads((shared / EXPERIMENT_FILE).read_text())["runs"]
    assert sorted(run["shard"] for run in runs) == ["0/3", "1/3", "2/3"]  # no update lost

    # A rerun of a shard skips its finished cell (in-process: no JAX work is left).
    again = run_experiment(_tiny_config(), shared, workers=0, shard=Shard(1, 3))
    assert (again.cells, again.ran, again.skipped) == (1, 0, 1)

    write_report(shared)
    merged = merged_rows(shared, json.loads((shared / EXPERIMENT_FILE).read_text())["config"])
    expected = read_rows(unsharded)
    assert [row["cell"] for row in merged] == [row["cell"] for row in expected]
    for row, want in zip(merged, expected):
        assert row["status"] == "ok" and 0.0 <= row["backdoor_accuracy"] <= 1.0
        got, want = _untimed(row), _untimed(want)
        assert got.keys() == want.keys()
        for key, value in want.items():
            assert got[key] == (pytest.approx(value, abs=1e-6)
                                if isinstance(value, float) else value), (row["cell"], key)

    # results.csv of the merge is the unsharded run's but for its timing columns.
    def table(root):
        with open(root / CSV_FILE) as handle:
            return [_untimed(line) for line in csv.DictReader(handle)]

    assert [sorted(line) for line in table(shared)] == [sorted(line) for line in table(unsharded)]
    assert [line["cell"] for line in table(shared)] == [line["cell"] for line in table(unsharded)]
    assert "3 finished cells" in (shared / "REPORT.md").read_text()

"""A sweep's task graph: training first, then retraining, then the cells that compare to it."""

import json
import pathlib

from scu_jax.experiments.grid import validate_experiment
from scu_jax.experiments.sweeps import experiment_config
from scu_jax.experiments.tasks import TaskGraph


def _graph(cells=None):
    config = experiment_config("edr_sweep", "smoke")
    todo = validate_experiment(config) if cells is None else cells
    return TaskGraph.plan(config, pathlib.Path("/sweep"), todo), todo


def test_training_then_retraining_then_the_other_cells():
    graph, todo = _graph()
    groups = {cell.group for cell in todo}
    assert len(graph.tasks) == len(todo) + len(groups)  # one training task per group
    ready = graph.ready()
    assert len(ready) == len(groups) and all(t.startswith("train ") for t in ready)
    first = ready[0]
    payload = graph.take(first)
    assert payload["kind"] == "train" and "cell" not in payload and "label" not in payload
    json.dumps(payload)  # what a worker process receives is plain JSON
    graph.finish(first)
    group_id = first.removeprefix("train ")
    # The group's training done, its retraining is ready; every other cell (the original system's
    # evaluation included) measures its distance to retraining, so it waits.
    now = [t for t in graph.ready() if t.startswith(group_id + "/")]
    assert [graph.tasks[t]["method"] for t in now] == ["retrain"]
    retrain = now[0]
    graph.take(retrain)
    graph.finish(retrain)
    after = {graph.tasks[t]["method"] for t in graph.ready() if t.startswith(group_id + "/")}
    assert after == {m for m in (c.method for c in todo if c.group.id == group_id)} - {"retrain"}
    assert graph.kinds([retrain, first]) == ["retrain", "train"]


def test_a_finished_retrain_is_not_waited_for():
    _, everything = _graph()
    without_retrain = [cell for cell in everything if cell.method != "retrain"]
    graph, _ = _graph(without_retrain)
    for train_id in [t for t in graph.ready() if t.startswith("train ")]:
        graph.take(train_id)
        graph.finish(train_id)
    # Every cell is ready once its group trained: none waits for a retrain task it does not have.
    assert len(graph.ready()) == len(without_retrain)
    assert all(task["reference_dir"].endswith("/retrain") for task in graph.pending.values())


def test_runs_together_makes_one_task_of_the_tasks_that_differ_by_their_seed():
    config = experiment_config("edr_sweep", "smoke")
    config.grid.seeds, config.runs_together = (0, 1, 2), True
    todo = validate_experiment(config)  # 2 EDRs × 3 seeds × (original, retrain, scu, vbu)
    graph = TaskGraph.plan(config, pathlib.Path("/sweep"), todo)
    together = {t: task for t, task in graph.tasks.items() if task["kind"] == "together"}
    # Per EDR: the 3 trainings, the 3 scu cells and the 3 vbu cells; original and retrain alone.
    assert sorted((task["of"], task["method"], len(task["members"]))
                  for task in together.values()) == sorted(
        [("train", "train", 3)] * 2 + [("cell", "scu", 3)] * 2 + [("cell", "vbu", 3)] * 2)
    assert len(graph.tasks) == 6 + 2 * 3 * 2  # + each group's original and retrain cells
    cells = [cell for task in together.values() for cell in task.get("cells", [])]
    assert len(cells) == len({c.id for c in cells}) == 12
    assert all(c.method in ("scu", "vbu") for c in cells)
    ready = graph.ready()
    assert len(ready) == 2 and all(graph.tasks[t]["of"] == "train" for t in ready)
    assert [m["train_dir"].rsplit("/", 2)[1] for m in graph.tasks[ready[0]]["members"]] == [
        "seed_0", "seed_1", "seed_2"]
    json.dumps(graph.take(ready[0]))  # the members' payloads are plain JSON
    graph.finish(ready[0])
    # That EDR's training done: its 3 retrains are ready; its scu and vbu wait for all 3.
    now = [t for t in graph.ready() if t != ready[1]]
    assert sorted(graph.tasks[t]["method"] for t in now) == ["retrain"] * 3
    for task_id in now:
        graph.take(task_id)
        graph.finish(task_id)
    now = {graph.tasks[t]["method"] for t in graph.ready() if t != ready[1]}
    assert now == {"original", "scu", "vbu"}
    assert graph.kinds([t for t in graph.ready() if graph.tasks[t]["method"] == "scu"]) == [
        "scu ×3"]


def test_each_known_fraction_is_measured_against_its_own_retraining():
    config = experiment_config("known_sweep", "smoke")
    todo = validate_experiment(config)
    graph = TaskGraph.plan(config, pathlib.Path("/sweep"), todo)
    for cell in todo:
        task = graph.tasks[cell.id]
        assert task["config"]["forget"]["known_fraction"] == cell.known_fraction
        if cell.method == "retrain":
            assert task["reference_dir"] is None
            continue
        retrain = f"retrain_known{cell.known_fraction:g}"
        assert task["reference_dir"].endswith(f"/seed_0/{retrain}")
        assert f"{cell.group.id}/{retrain}" in graph.dependencies[cell.id]

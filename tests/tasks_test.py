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

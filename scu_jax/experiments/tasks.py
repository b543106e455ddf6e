"""The tasks of a sweep and their order: a group's training, then its cells (retrain before the
others, which measure their distance to it).

A task is a plain JSON-able dict (what a worker process receives) plus its label and, for a
cell, the `Cell`; `TaskGraph` hands out the tasks whose dependencies are finished. With the
experiment's `runs_together`, the tasks that differ by their seed alone — the groups' trainings,
and an erased-data method's cells at one grid point — are one `together` task each, run as one
vmapped program (`train_and_evaluate_many`, `unlearn_and_evaluate_many`).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Sequence

import ml_collections

from scu_jax.config import ERASED_LOOP_METHODS
from scu_jax.experiments.grid import ORIGINAL, Cell, Group, cell_config, group_config
from scu_jax.experiments.workdir import group_dir

# Tasks whose durations differ the most from the rest get an ETA estimate of their own.
_OWN_KINDS = (ORIGINAL, "retrain", "finetune")


def payload(task: dict[str, Any]) -> dict[str, Any]:
    """What a worker needs (plain JSON-able values only)."""
    plain = {key: value for key, value in task.items()
             if key not in ("cell", "cells", "group", "label", "members")}
    if task["kind"] == "together":
        plain["members"] = [payload(member) for member in task["members"]]
    return plain


def _seedless(task: dict[str, Any]) -> tuple | None:
    """What tasks that may run together share (their grid point and what they run), or None for
    a task that runs alone (an original's evaluation, retraining, fine-tuning)."""
    if task["kind"] == "train":
        return ("train", *dataclasses.astuple(task["group"])[:-1])
    if task["method"] not in ERASED_LOOP_METHODS:
        return None
    cell = task["cell"]
    return ("cell", *dataclasses.astuple(cell.group)[:-1], cell.method, cell.beta_u,
            cell.known_fraction)


def _together(tasks: dict[str, dict], dependencies: dict[str, set[str]]) -> None:
    """Replaces every set of two or more tasks that differ by their seed alone with one
    `together` task (in place): its members' payloads, its cells, their dependencies."""
    sets: dict[tuple, list[str]] = {}
    for task_id, task in tasks.items():
        key = _seedless(task)
        if key is not None:
            sets.setdefault(key, []).append(task_id)
    renamed: dict[str, str] = {}
    for key, members in sets.items():
        if len(members) < 2:
            continue
        first = tasks[members[0]]
        seeds = ",".join(str(tasks[m]["group"].seed if key[0] == "train" else
                             tasks[m]["cell"].group.seed) for m in members)
        label = f"{first['label'].rsplit('/seed_', 1)[0]} seeds {seeds}" + (
            " train" if key[0] == "train" else f" {first['cell'].name}")
        together_id = f"together {label}"
        tasks[together_id] = {"kind": "together", "of": key[0], "label": label,
                              "members": [tasks.pop(m) for m in members],
                              "method": first.get("method", "train")}
        if key[0] == "cell":
            tasks[together_id]["cells"] = [member["cell"] for member in
                                           tasks[together_id]["members"]]
        dependencies[together_id] = set().union(*(dependencies.pop(m) for m in members))
        renamed.update({m: together_id for m in members})
    for needs in dependencies.values():
        for old in needs & set(renamed):
            needs.discard(old)
            needs.add(renamed[old])


def _group_tasks(config: ml_collections.ConfigDict, root: pathlib.Path, group: Group,
                 cells: Sequence[Cell]) -> tuple[dict[str, dict], dict[str, set[str]]]:
    base = config.bases[group.dataset]
    directory = group_dir(root, group.id)
    train_dir = str(directory / "train")
    has_retrain = "retrain" in config.grid.methods
    train_id = f"train {group.id}"
    tasks = {train_id: {"kind": "train", "config": json.loads(group_config(base, group).to_json()),
                        "train_dir": train_dir, "label": f"{group.id} train", "group": group}}
    dependencies: dict[str, set[str]] = {train_id: set()}
    for cell in cells:
        tasks[cell.id] = {"kind": "cell", "cell": cell, "method": cell.method,
                          "config": json.loads(cell_config(base, cell).to_json()),
                          "train_dir": train_dir, "out_dir": str(directory / cell.name),
                          "reference_dir": (str(directory / cell.retrain().name) if has_retrain
                                            and cell.method != "retrain" else None),
                          "label": cell.id}
        needs = {train_id}
        if has_retrain and cell.method != "retrain":
            needs.add(cell.retrain().id)
        dependencies[cell.id] = needs
    return tasks, dependencies


@dataclasses.dataclass
class TaskGraph:
    """Tasks by id, what each still waits for, and those not yet handed out (in order)."""

    tasks: dict[str, dict[str, Any]]
    dependencies: dict[str, set[str]]
    pending: dict[str, dict[str, Any]] = dataclasses.field(init=False)

    def __post_init__(self):
        self.pending = dict(self.tasks)

    @classmethod
    def plan(cls, config: ml_collections.ConfigDict, root: pathlib.Path,
             todo: Sequence[Cell]) -> "TaskGraph":
        """The tasks that finish the cells `todo` of the experiment in `root`."""
        groups: dict[Group, list[Cell]] = {}
        for cell in todo:
            groups.setdefault(cell.group, []).append(cell)
        tasks: dict[str, dict[str, Any]] = {}
        dependencies: dict[str, set[str]] = {}
        for group, cells in groups.items():
            group_tasks, group_dependencies = _group_tasks(config, root, group, cells)
            tasks.update(group_tasks)
            dependencies.update(group_dependencies)
        # A group whose retrain is already finished needs no retrain task.
        for needs in dependencies.values():
            needs.intersection_update(tasks)
        if config.get("runs_together", False):
            _together(tasks, dependencies)
        return cls(tasks, dependencies)

    def kind(self, task_id: str) -> str:
        """The duration class of a task, for the ETA."""
        task = self.tasks[task_id]
        if task["kind"] == "together":
            return f"{task['method']} ×{len(task['members'])}"
        return task["method"] if task["kind"] == "cell" and task["method"] in _OWN_KINDS else (
            task["kind"])

    def ready(self) -> list[str]:
        return [task_id for task_id in self.pending if not self.dependencies[task_id]]

    def take(self, task_id: str) -> dict[str, Any]:
        """Hands a ready task out: what to send to a worker."""
        return payload(self.pending.pop(task_id))

    def finish(self, task_id: str) -> None:
        for needs in self.dependencies.values():
            needs.discard(task_id)

    def kinds(self, task_ids: Sequence[str]) -> list[str]:
        return [self.kind(task_id) for task_id in task_ids]

    def labels(self, task_ids: Sequence[str]) -> list[str]:
        return [self.tasks[task_id]["label"] for task_id in task_ids]

"""Training the original system in a workdir: resume, checkpoints, summaries, results.json.

`train_and_evaluate(config, workdir)` is the library entry of `scu-train`. The original system
trains on the poisoned training set D_e ∪ D_r with the recipe of `methods/training.py`, run by the
engine; retraining (`runs/unlearn.py`) is the same recipe on D_r, checkpointed the same way.
Randomness: data order from `(seed, epoch)`, every other draw from `fold_in(key, step)`, so a
resumed run repeats the uninterrupted one exactly.
"""

from __future__ import annotations

import pathlib
from typing import Any, NamedTuple, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging

from scu_jax import engine
from scu_jax.config import validate_config
from scu_jax.errors import CheckpointMismatchError, CheckpointReadError, NonFiniteError
from scu_jax.evaluation import evaluate_system
from scu_jax.methods import training
from scu_jax.methods.training import Examples, Recipe, TrainState
from scu_jax.models import System
from scu_jax.parallel import DataParallel, barrier, is_primary
from scu_jax.runs import signals, summaries
from scu_jax.runs.build import (build_for, convolutions_slow_in_loops, data_parallel,
                                protocol_of, recipe_of)
from scu_jax.runs.checkpointing import CHECKPOINT_DIR, Checkpoints, model_digest
from scu_jax.runs.files import RESULTS_FILE, check_workdir, remove_run_outputs, write_json_atomic


class SaveCheckpoints(engine.Hook):
    """Saves the state every `every` epochs and at the end of each phase, with the times so far."""

    def __init__(self, checkpoints: Checkpoints, config: ml_collections.ConfigDict, kind: str,
                 phase_ends: tuple[int, ...], previous: engine.Report, every: int,
                 data: dict | None = None, runs_together: int = 1):
        self.checkpoints, self.config, self.kind = checkpoints, config, kind
        self.phase_ends, self.previous, self.every = phase_ends, previous, every
        self.data, self.runs_together = data, runs_together

    def needs_state(self, epochs_done: int) -> bool:
        # A signal: this epoch is saved, then the run stops (`signals.StopOnSignal`).
        return (epochs_done % self.every == 0 or epochs_done in self.phase_ends
                or signals.received() is not None)

    def on_epoch(self, result: engine.EpochResult, state: Any | None) -> None:
        epochs_done = result.epoch + 1
        if state is None or not self.needs_state(epochs_done):
            return
        so_far = total(self.previous, result.report)
        self.checkpoints.save(epochs_done, state, self.config, {
            "train_seconds": so_far.seconds, "compile_seconds": so_far.compile_seconds,
            "steps": so_far.steps, "kind": self.kind, "runs_together": self.runs_together,
            **({"data": self.data} if self.data else {})})


def total(previous: engine.Report, current: engine.Report) -> engine.Report:
    """The times and steps of a resumed run: its earlier calls' and this call's."""
    return engine.Report(previous.steps + current.steps, current.epochs,
                         previous.seconds + current.seconds,
                         previous.compile_seconds + current.compile_seconds, current.history)


def progress_and_summaries(config: ml_collections.ConfigDict, workdir: pathlib.Path | None,
                           total_steps: int, last_epochs: tuple[int, ...], subdir: str,
                           step_offset: int = 0
                           ) -> tuple[list[engine.Hook], summaries.TensorBoardWriter | None]:
    """The hooks every run has: progress lines, and (process 0, with a workdir) TensorBoard
    summaries under `workdir/summaries/<subdir>`; a run resumed after `step_offset` steps
    supersedes what an interrupted one wrote after them."""
    hooks: list[engine.Hook] = [engine.ReportProgress(total_steps, config.log_every_seconds,
                                                      last_epochs=last_epochs)]
    writer = None
    if workdir is not None and is_primary():
        writer = summaries.TensorBoardWriter(workdir / summaries.SUMMARIES_DIR / subdir,
                                             purge_step=step_offset + 1 if step_offset else None)
        hooks.append(engine.WriteSummaries(writer, config.summary_every_steps))
    return hooks, writer


def fit(system: System, recipe: Recipe, config: ml_collections.ConfigDict, state: TrainState,
        images: np.ndarray, labels: np.ndarray, *, parallel: DataParallel, start_epoch: int = 0,
        name: str = "train", hooks: tuple[engine.Hook, ...] = (),
        workdir: pathlib.Path | None = None, summaries_subdir: str = "train",
        when_non_finite: str = "") -> tuple[TrainState, engine.Report]:
    """Runs `recipe`'s epochs `[start_epoch, total_epochs)` on a dataset through the engine.

    `config` (validated) gives the seed, the block size and the progress and summary intervals;
    `parallel` is the run's mesh; with a `workdir`, the curves go to TensorBoard under
    `workdir/summaries/<summaries_subdir>`.

    Raises:
      NonFiniteError: a loss or a parameter became NaN or infinite (named run, phase and step).
    """
    steps_per_epoch = len(images) // recipe.batch_size

    def fresh(state, phase):
        return state.replace(opt_state={**state.opt_state, phase: parallel.replicate(
            training.optimizer_state(recipe, state.params, phase))})

    phases = training.phases(system, recipe, seed=config.seed, num_examples=len(images),
                             start_epoch=start_epoch, fresh_optimizer=fresh)
    last_epochs = tuple(phase.epochs[-1] for phase in phases)
    common, writer = progress_and_summaries(config, workdir, recipe.total_epochs * steps_per_epoch,
                                            last_epochs, summaries_subdir,
                                            start_epoch * steps_per_epoch)
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 1)
    stop = signals.StopOnSignal(recipe.total_epochs, what=name,
                                saved=any(isinstance(hook, SaveCheckpoints) for hook in hooks))
    try:
        with signals.stops_at_boundaries():
            return engine.run(
                phases, state, Examples(images, labels), key, name=name, parallel=parallel,
                block_steps=config.train.steps_per_dispatch,
                per_step=convolutions_slow_in_loops(config), hooks=(*common, *hooks, stop),
                step_offset=start_epoch * steps_per_epoch, when_non_finite=when_non_finite)
    finally:
        if writer is not None:
            writer.close()


def fit_with_checkpoints(system: System, recipe: Recipe, config: ml_collections.ConfigDict,
                         workdir: pathlib.Path, images: np.ndarray, labels: np.ndarray, *,
                         parallel: DataParallel, kind: str, image_shape: tuple[int, ...],
                         subdir: str = CHECKPOINT_DIR, data: dict | None = None
                         ) -> tuple[TrainState, engine.Report]:
    """`fit` from scratch in `workdir`, resuming from its latest checkpoint in `subdir`.

    Saves every `config.checkpoint_every_epochs` epochs and at the end of each phase, with `data`
    (the training split's `data.data_identity`) in the checkpoint's metadata. Returns the final
    state and a report whose times and steps are summed over every (resumed) call.
    """
    checkpoints = Checkpoints(workdir, subdir=subdir)
    checkpoints.check_compatible(config)
    state = training.initial_state(system, recipe, config.seed, image_shape)
    start_epoch, previous = 0, engine.Report()
    if checkpoints.latest_step() is not None:
        start_epoch = checkpoints.latest_step()
        state = checkpoints.restore(state)
        saved = checkpoints.saved_config()
        previous = engine.Report(steps=int(saved.get("steps", 0)),
                                 seconds=float(saved.get("train_seconds", 0.0)),
                                 compile_seconds=float(saved.get("compile_seconds", 0.0)))
        logging.info("resuming %s from epoch %d", workdir, start_epoch)
    saver = SaveCheckpoints(checkpoints, config, kind,
                            (recipe.receiver_epochs, recipe.total_epochs), previous,
                            config.checkpoint_every_epochs, data)
    try:
        state, report = fit(system, recipe, config, state, images, labels,
                            parallel=parallel, start_epoch=start_epoch, name=kind, hooks=(saver,),
                            workdir=workdir, summaries_subdir=kind,
                            when_non_finite="; the last good checkpoint is kept")
    finally:
        checkpoints.close()
    return state, total(previous, report)


class _Training(NamedTuple):
    """A training run in a workdir, checked, with its data and system built (`_prepare`)."""

    config: ml_collections.ConfigDict
    parallel: DataParallel
    workdir: pathlib.Path
    split: Any  # the ErasureSplit it trains on
    system: System
    image_shape: tuple[int, ...]


def _prepare(config: ml_collections.ConfigDict, workdir: str, overwrite: bool) -> _Training:
    """Every check before any work (a workdir of another configuration is refused, or emptied
    with `overwrite`), and the training data and system built."""
    validate_config(config)
    parallel = data_parallel(config)  # the mesh's errors before any work
    check_workdir(workdir)
    workdir_path = pathlib.Path(workdir)
    if (workdir_path / "sharded.json").exists():  # `runs.sharded.MANIFEST`
        if not overwrite:
            raise CheckpointMismatchError(f"{workdir} holds a sharded system; use another "
                                          "--workdir, or --overwrite")
        remove_run_outputs(workdir_path, ("sharded.json", "slices", RESULTS_FILE))
    try:
        Checkpoints(workdir_path).check_compatible(config)
    except (CheckpointMismatchError, CheckpointReadError):
        if not overwrite:
            raise
        logging.warning("--overwrite: deleting the run of another configuration in %s", workdir_path)
        if is_primary():
            remove_run_outputs(workdir_path, (CHECKPOINT_DIR, RESULTS_FILE,
                                              summaries.SUMMARIES_DIR))
        barrier("overwrite")
    split, system, image_shape = build_for(config, training=True)
    logging.info("training on %s: %s", config.dataset, split.summary())
    return _Training(config, parallel, workdir_path, split, system, image_shape)


def _finish(job: _Training, state: TrainState, report: engine.Report,
            runs_together: int = 1) -> TrainState:
    """Evaluates a trained system and writes its results.json (with `runs_together`, the runs of
    the program that trained it, where more than one)."""
    config = job.config
    # Evaluated on each process's default device from host copies: the mesh is for the steps.
    params, batch_stats = jax.device_get((state.params, state.batch_stats))
    protocol = protocol_of(config)
    results = evaluate_system(job.system, params, batch_stats, job.split, protocol)
    results.update({"protocol": protocol.description, "receiver": protocol.receiver,
                    "train_seconds": report.seconds, "compile_seconds": report.compile_seconds,
                    "epochs": config.train.receiver_epochs + config.train.epochs,
                    "steps": int(state.step), "dataset": config.dataset,
                    "devices": job.parallel.size, "processes": jax.process_count(),
                    "model_sha256": model_digest(params, batch_stats)})
    if runs_together > 1:
        results["runs_together"] = runs_together
    if is_primary():
        write_json_atomic(job.workdir / RESULTS_FILE, results)
    logging.info("results: %s", {k: round(v, 4) if isinstance(v, float) else v
                                 for k, v in results.items()})
    return state


def _fit_alone(job: _Training) -> tuple[TrainState, engine.Report, int]:
    """`fit_with_checkpoints`, and how many runs the program that trained the last epochs ran
    (a finished run's comes from its last checkpoint)."""
    checkpoints = Checkpoints(job.workdir)
    recipe = recipe_of(job.config)
    together = (int(checkpoints.saved_config().get("runs_together", 1))
                if checkpoints.latest_step() == recipe.total_epochs else 1)
    checkpoints.close()
    return *fit_with_checkpoints(job.system, recipe_of(job.config), job.config, job.workdir,
                                job.split.train_images, job.split.train_labels,
                                parallel=job.parallel, kind="train",
                                image_shape=job.image_shape, data=job.split.source), together


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       overwrite: bool = False) -> TrainState:
    """Trains (or resumes) the original system in `workdir`, evaluates it, writes results.json.

    The original system trains on the poisoned training set D_e ∪ D_r (`forget.kind` "backdoor"),
    or on the whole clean training split (any other kind: one system for every request; its
    results then read the training and test sets). Returns the final
    `TrainState`. Resumes from `workdir`'s latest checkpoint when there is one (raising
    `CheckpointMismatchError` before any work if it belongs to another configuration, unless
    `overwrite`: then that run's checkpoints, results and summaries are deleted first). The
    curves are in `workdir/summaries/train` (TensorBoard).
    """
    job = _prepare(config, workdir, overwrite)
    return _finish(job, *_fit_alone(job))


def _together_key(job: _Training) -> str | None:
    """What runs trained together must share (the configuration but its seed, and the data's
    shapes), or None for a run that trains alone: a resumed one, one on a mesh or in several
    processes, or one whose steps are not run an epoch per scan."""
    config = job.config
    checkpoints = Checkpoints(job.workdir)
    resumed = checkpoints.latest_step() is not None
    checkpoints.close()
    if (resumed or job.parallel.size > 1
            or jax.process_count() > 1 or config.train.steps_per_dispatch
            or convolutions_slow_in_loops(config)):
        return None
    unseeded = config.copy_and_resolve_references()
    unseeded.seed = 0
    return f"{unseeded.to_json(sort_keys=True)}|{job.split.train_images.shape}"


def train_and_evaluate_many(configs: Sequence[ml_collections.ConfigDict],
                            workdirs: Sequence[str], *,
                            overwrite: bool = False) -> list[TrainState]:
    """`train_and_evaluate` of several runs (seeds): the runs that start from scratch with the
    same configuration but their seed train as ONE vmapped program per phase
    (`engine.run_many`), each checkpointed in its workdir as it would be alone; the others (a
    resumed run, a mesh) one by one. Each result equals its run alone (to float rounding).

    Returns the final states, one per run.
    """
    jobs = [_prepare(config, workdir, overwrite) for config, workdir in zip(configs, workdirs)]
    groups: dict[str, list[_Training]] = {}
    for job in jobs:
        key = _together_key(job)
        if key is not None:
            groups.setdefault(key, []).append(job)
    trained: dict[int, TrainState] = {}
    for group in groups.values():
        if len(group) < 2:
            continue
        try:
            outcomes = fit_many(group)
        except NonFiniteError as error:
            logging.warning("%s; training the runs one by one (each from its last checkpoint)",
                            error)
            continue
        for job, (state, report) in zip(group, outcomes):
            trained[id(job)] = _finish(job, state, report, runs_together=len(group))
    return [trained[id(job)] if id(job) in trained else _finish(job, *_fit_alone(job))
            for job in jobs]


def fit_many(jobs: Sequence[_Training]) -> list[tuple[TrainState, engine.Report]]:
    """Trains runs of one configuration but their seed, from scratch, as one vmapped program
    per phase, with the checkpoints, summaries and times `fit_with_checkpoints` gives each alone
    (the times are the whole batch's)."""
    first = jobs[0]
    recipe, config = recipe_of(first.config), first.config
    num_examples = len(first.split.train_images)
    seeds = [job.config.seed for job in jobs]
    phases = [training.phases(job.system, recipe, seed=seed, num_examples=num_examples)
              for job, seed in zip(jobs, seeds)]
    states = jax.tree.map(lambda *runs: np.stack(runs), *[
        jax.device_get(training.initial_state(first.system, recipe, seed, first.image_shape))
        for seed in seeds])
    keys = np.stack([jax.random.fold_in(jax.random.PRNGKey(seed), 1) for seed in seeds])
    sources = [job.split.source for job in jobs]
    shared = all(source == sources[0] for source in sources[1:]) and all(
        np.array_equal(job.split.train_images, first.split.train_images) for job in jobs[1:])
    examples = [Examples(job.split.train_images, job.split.train_labels) for job in jobs]
    data = examples[0] if shared else jax.tree.map(lambda *runs: np.stack(runs), *examples)
    steps_per_epoch = num_examples // recipe.batch_size
    last_epochs = tuple(phase.epochs[-1] for phase in phases[0])
    hooks, writers, stores = [], [], []
    for index, job in enumerate(jobs):
        checkpoints = Checkpoints(job.workdir)
        stores.append(checkpoints)
        common, writer = progress_and_summaries(job.config, job.workdir,
                                                recipe.total_epochs * steps_per_epoch,
                                                last_epochs, "train")
        writers.append(writer)
        saver = SaveCheckpoints(checkpoints, job.config, "train",
                                (recipe.receiver_epochs, recipe.total_epochs), engine.Report(),
                                config.checkpoint_every_epochs, job.split.source, len(jobs))
        hooks.append([*(common if index == 0 else common[1:]), saver])  # one progress line
    # After every run's checkpoint: the last run's hooks are called last.
    hooks[-1].append(signals.StopOnSignal(recipe.total_epochs, saved=True,
                                          what=f"{len(jobs)} trainings as one program"))
    try:
        with signals.stops_at_boundaries():
            states, reports = engine.run_many(
                phases[0], [[phase.batches for phase in of_run] for of_run in phases], states,
                data, keys, name="train", shared_data=shared, hooks=hooks,
                epochs_per_dispatch=config.checkpoint_every_epochs)
    finally:
        for writer in writers:
            if writer is not None:
                writer.close()
        for checkpoints in stores:
            checkpoints.close()
    return [(jax.tree.map(lambda a, i=index: a[i], states), report)
            for index, report in enumerate(reports)]

"""Training the original system in a workdir: resume, checkpoints, summaries, results.json.

`train_and_evaluate(config, workdir)` is the library entry of `scu-train`. The original system
trains on the poisoned training set D_e ∪ D_r with the recipe of `methods/training.py`, run by the
engine; retraining (`runs/unlearn.py`) is the same recipe on D_r, checkpointed the same way.
Randomness: data order from `(seed, epoch)`, every other draw from `fold_in(key, step)`, so a
resumed run repeats the uninterrupted one exactly.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from scu_jax import engine
from scu_jax.config import validate_config
from scu_jax.errors import CheckpointMismatchError, CheckpointReadError
from scu_jax.evaluation import evaluate_system
from scu_jax.methods import training
from scu_jax.methods.training import Examples, Recipe, TrainState
from scu_jax.models import System
from scu_jax.parallel import DataParallel, barrier, is_primary
from scu_jax.runs import summaries
from scu_jax.runs.build import (build_for, convolutions_slow_in_loops, data_parallel,
                                protocol_of, recipe_of)
from scu_jax.runs.checkpointing import CHECKPOINT_DIR, Checkpoints
from scu_jax.runs.files import RESULTS_FILE, check_workdir, remove_run_outputs, write_json_atomic


class SaveCheckpoints(engine.Hook):
    """Saves the state every `every` epochs and at the end of each phase, with the times so far."""

    def __init__(self, checkpoints: Checkpoints, config: ml_collections.ConfigDict, kind: str,
                 phase_ends: tuple[int, ...], previous: engine.Report, every: int,
                 data: dict | None = None):
        self.checkpoints, self.config, self.kind = checkpoints, config, kind
        self.phase_ends, self.previous, self.every = phase_ends, previous, every
        self.data = data

    def needs_state(self, epochs_done: int) -> bool:
        return epochs_done % self.every == 0 or epochs_done in self.phase_ends

    def on_epoch(self, result: engine.EpochResult, state: Any | None) -> None:
        epochs_done = result.epoch + 1
        if state is None or not self.needs_state(epochs_done):
            return
        so_far = total(self.previous, result.report)
        self.checkpoints.save(epochs_done, state, self.config, {
            "train_seconds": so_far.seconds, "compile_seconds": so_far.compile_seconds,
            "steps": so_far.steps, "kind": self.kind,
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
    try:
        return engine.run(
            phases, state, Examples(images, labels), key, name=name, parallel=parallel,
            block_steps=config.train.steps_per_dispatch,
            per_step=convolutions_slow_in_loops(config), hooks=(*common, *hooks),
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
    validate_config(config)
    parallel = data_parallel(config)  # the mesh's errors before any work
    check_workdir(workdir)
    workdir_path = pathlib.Path(workdir)
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
    state, report = fit_with_checkpoints(system, recipe_of(config), config, workdir_path,
                                         split.train_images, split.train_labels,
                                         parallel=parallel, kind="train", image_shape=image_shape,
                                         data=split.source)
    # Evaluated on each process's default device from host copies: the mesh is for the steps.
    params, batch_stats = jax.device_get((state.params, state.batch_stats))
    protocol = protocol_of(config)
    results = evaluate_system(system, params, batch_stats, split, protocol)
    results.update({"protocol": protocol.description, "receiver": protocol.receiver,
                    "train_seconds": report.seconds, "compile_seconds": report.compile_seconds,
                    "epochs": config.train.receiver_epochs + config.train.epochs,
                    "steps": int(state.step), "dataset": config.dataset,
                    "devices": parallel.size, "processes": jax.process_count()})
    if is_primary():
        write_json_atomic(workdir_path / RESULTS_FILE, results)
    logging.info("results: %s", {k: round(v, 4) if isinstance(v, float) else v
                                 for k, v in results.items()})
    return state

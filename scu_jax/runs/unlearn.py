"""Unlearning a trained system: restore it, run a method, save the result, evaluate (the paper's protocol).

`unlearn_and_evaluate(config, init_workdir, workdir)` is the library entry of `scu-unlearn`. It
never writes into `init_workdir` (opened read-only), and it refuses a `workdir` that holds the
result of another method or configuration.
"""

from __future__ import annotations

import pathlib
from typing import Any, NamedTuple, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging

from scu_jax.config import (ERASED_LOOP_METHODS, config_from_json, method_config,
                            training_fingerprint, validate_config)
from scu_jax.data import ErasureSplit, ids_digest, move_to_erased
from scu_jax.errors import CheckpointMismatchError, CheckpointReadError, NonFiniteError
from scu_jax.expansion import expansion_summary, flag_like_erased
from scu_jax.methods import training
from scu_jax.models import System, receiver_of
from scu_jax.parallel import DataParallel, barrier, is_primary
from scu_jax.runs import summaries
from scu_jax.runs.build import build_for, data_parallel, finetune_recipe, recipe_of
from scu_jax.runs.checkpointing import CHECKPOINT_DIR, Checkpoints, model_digest
from scu_jax.runs.erasing import erased_loop, erased_loops_together, run_info, ssd_pass
from scu_jax.runs.files import RESULTS_FILE, check_workdir, remove_run_outputs, write_json_atomic
from scu_jax.runs.evaluate import evaluate
from scu_jax.runs.saved import load_variables, receiver_entries
from scu_jax.runs.train import fit, fit_with_checkpoints
from scu_jax.runs.worst_case import resolve_worst_case

RETRAIN_PROGRESS_DIR = "retrain_checkpoints"


# The only `unlearning` fields the runs of these methods read.
_OWN_FIELDS = {"finetune": ("learning_rate", "batch_size", "finetune_epochs"),
               "l1_sparse": ("learning_rate", "batch_size", "finetune_epochs", "l1_strength"),
               "ssd": ("batch_size", "ssd_alpha", "ssd_lambda")}
_BASELINE_FIELDS = ("finetune_epochs", "ssd_alpha", "ssd_lambda", "l1_strength", "salun_fraction")


def _unlearning_fingerprint(config: ml_collections.ConfigDict,
                            split: ErasureSplit | None = None) -> dict[str, Any]:
    """The config fields a method's result depends on (so a rerun may reuse it), and for a forget
    set without a backdoor the set itself (its kind and `data.ids_digest`)."""
    unlearning = config.unlearning.to_dict()
    method = unlearning.pop("method")
    unlearning.pop("per_method", None)  # applied by `method_config` before this is called
    if method == "retrain":
        unlearning = {}  # the training recipe alone
    elif method in _OWN_FIELDS:
        unlearning = {k: unlearning[k] for k in _OWN_FIELDS[method]}
    else:  # the erased-data methods: every field but the other baselines' own
        unlearning = {k: v for k, v in unlearning.items() if k not in _BASELINE_FIELDS
                      or (method == "salun" and k == "salun_fraction")}
    fingerprint = {"training": training_fingerprint(config), "unlearning": unlearning}
    forget = forget_fingerprint(split)
    if forget is not None:
        fingerprint["forget"] = forget
    return fingerprint


def forget_fingerprint(split: ErasureSplit | None) -> dict[str, Any] | None:
    """What identifies a forget set without a backdoor: its kind, the sha256 of D_e's indices and
    of the samples kept out of D_r besides (erased by earlier requests); for the backdoor split,
    which the config alone identifies, None, or where only part of it is known or D_r samples
    were flagged (`forget.expand`), what is erased."""
    if split is not None and split.backdoor and (split.known_fraction < 1 or split.num_flagged):
        fingerprint = {"kind": split.kind, "known_fraction": split.known_fraction,
                       "flagged": split.num_flagged, "sha256": ids_digest(split.erased_indices)}
        if split.num_flagged:
            fingerprint["known_sha256"] = ids_digest(split.erased_indices[:split.num_known])
        return fingerprint
    if split is None or split.backdoor:
        return None
    outside = np.flatnonzero(split.train_is_erased)
    return {"kind": split.kind, "sha256": ids_digest(split.erased_indices),
            "excluded_sha256": ids_digest(np.setdiff1d(outside, split.erased_indices))}


def check_same_data(saved: dict[str, Any], split: ErasureSplit, where: Any) -> None:
    """Raises `CheckpointMismatchError` if the system saved with metadata `saved` trained on
    another training split (or order) than `split` indexes (checkpoints from before the data was
    recorded pass)."""
    data = saved.get("data")
    if data and split.source and data != split.source:
        raise CheckpointMismatchError(
            f"the system in {where} was trained on {data.get('dataset')} with "
            f"{data.get('num_train')} training samples (sha256 {str(data.get('sha256'))[:12]}), "
            f"but this run indexes {split.source['dataset']} with {split.source['num_train']} "
            f"(sha256 {split.source['sha256'][:12]}): sample indices would name other images")


def _check_init(config: ml_collections.ConfigDict, init_workdir: pathlib.Path,
                workdir: pathlib.Path, split: ErasureSplit) -> None:
    """Raises unless `init_workdir` holds a finished training of this config on this data, apart
    from `workdir`."""
    check_workdir(workdir)
    init_resolved, out_resolved = init_workdir.resolve(), workdir.resolve()
    if out_resolved == init_resolved or init_resolved in out_resolved.parents:
        raise ValueError(f"--workdir={workdir} is (inside) --init_workdir={init_workdir}; the "
                         "trained system's directory is never written to: choose another --workdir")
    trained = Checkpoints(init_workdir, read_only=True)
    if trained.latest_step() is None:
        raise FileNotFoundError(f"--init_workdir={init_workdir} holds no checkpoint; train with "
                                "scu-train first")
    kind = trained.latest_kind()
    if kind != "train":
        raise ValueError(f"--init_workdir={init_workdir} holds a {kind!r} checkpoint, not a trained "
                         "system")
    trained.check_compatible(config)
    check_same_data(trained.saved_config(), split, f"--init_workdir={init_workdir}")
    total_epochs = config.train.receiver_epochs + config.train.epochs
    if trained.latest_step() != total_epochs:
        raise ValueError(f"training in --init_workdir={init_workdir} is unfinished (epoch "
                         f"{trained.latest_step()} of {total_epochs}); rerun scu-train to finish it")


def _open_workdir(config: ml_collections.ConfigDict, workdir: pathlib.Path, split: ErasureSplit,
                  overwrite: bool = False) -> Checkpoints:
    """`workdir`'s checkpoints, checked to hold nothing or this very run's (`overwrite`: another
    run's is deleted instead)."""
    try:
        _check_reusable(config, workdir, split)
    except (CheckpointMismatchError, CheckpointReadError):
        if not overwrite:
            raise
        logging.warning("--overwrite: deleting the unlearning result of another configuration in %s",
                        workdir)
        if is_primary():
            remove_run_outputs(workdir, (CHECKPOINT_DIR, RETRAIN_PROGRESS_DIR, RESULTS_FILE,
                                         summaries.SUMMARIES_DIR))
        barrier("overwrite")
    return Checkpoints(workdir)


def _on_todays_schema(saved: dict[str, Any]) -> dict[str, Any] | None:
    """A saved result's fingerprint with the fields added since it was written at their defaults
    (the behaviour it ran with), so that an older result stays reusable."""
    fingerprint = saved.get("unlearning_fingerprint")
    if not isinstance(fingerprint, dict) or "method" not in saved:
        return fingerprint
    stored = {**fingerprint.get("training", {}),
              "unlearning": {**fingerprint.get("unlearning", {}), "method": saved["method"]}}
    rebuilt = _unlearning_fingerprint(config_from_json(stored))
    if "forget" in fingerprint:
        rebuilt["forget"] = fingerprint["forget"]
    return rebuilt


def _check_reusable(config: ml_collections.ConfigDict, workdir: pathlib.Path,
                    split: ErasureSplit) -> None:
    """Raises unless `workdir` is empty or holds (progress of) this very method, config and forget
    set."""
    out = Checkpoints(workdir)
    if out.latest_step() is not None:
        saved = out.saved_config()
        wanted = _unlearning_fingerprint(config, split)
        if (saved.get("method"), _on_todays_schema(saved)) != (config.unlearning.method, wanted):
            raise CheckpointMismatchError(
                f"{workdir} already holds an unlearning result of another method or configuration "
                f"(method {saved.get('method')!r}); use another --workdir, or --overwrite to "
                "replace it")
    if config.unlearning.method == "retrain":
        progress = Checkpoints(workdir, subdir=RETRAIN_PROGRESS_DIR)
        progress.check_compatible(config)
        # A clean-set retraining's fingerprint says nothing of the forget set; its progress
        # records the set, so an interrupted one never resumes for another.
        if (progress.latest_step() is not None and progress.saved_config().get("data", {}).get(
                "forget") != forget_fingerprint(split)):
            raise CheckpointMismatchError(
                f"{workdir} holds an interrupted retraining of another forget set; use another "
                "--workdir, or --overwrite to replace it")


def unlearn_and_evaluate(config: ml_collections.ConfigDict, init_workdir: str, workdir: str, *,
                         reference_workdir: str | None = None, overwrite: bool = False,
                         samples_file: str | None = None) -> dict[str, Any]:
    """Unlearns D_e from the system trained in `init_workdir`; saves and evaluates in `workdir`.

    Args:
      config: the trained system's config with `config.unlearning` set.
      init_workdir: a finished `scu-train` workdir (read only).
      workdir: where the unlearned system, its progress and results.json go. A rerun with the same
        config reuses a finished result (and resumes an interrupted `retrain`).
      reference_workdir: optional workdir of the `retrain` result; adds the distance to it.
      overwrite: a `workdir` holding another method's or configuration's result is emptied
        (its checkpoints and results only) instead of refused.
      samples_file: optional .npz for the report's reconstructions and membership scores.

    Returns:
      The results dict written to `workdir/results.json`.
    """
    job = _prepare(config, init_workdir, workdir, overwrite=overwrite)
    return _finish(job, _run_alone(job), reference_workdir=reference_workdir,
                   samples_file=samples_file)


class _Job(NamedTuple):
    """A method's run in a workdir, checked and loaded (`_prepare`)."""

    config: ml_collections.ConfigDict  # with the method's `per_method` entry applied
    parallel: DataParallel
    split: ErasureSplit  # what the results are read on
    method_split: ErasureSplit  # what the method is given: `split`, or with flagged D_r samples
    system: System
    image_shape: Any
    out_path: pathlib.Path
    out: Checkpoints
    trained: tuple[Any, Any]  # the trained system's params and batch_stats
    original_receiver: Any
    saved: dict[str, Any] | None  # a finished result's metadata, to reuse


def _prepare(config: ml_collections.ConfigDict, init_workdir: str, workdir: str, *,
             overwrite: bool) -> _Job:
    """Every check before any work, and the trained system loaded."""
    validate_config(config)
    config = method_config(config)  # the method's `unlearning.per_method` entry applied
    parallel = data_parallel(config)  # the mesh's errors before any work
    init_path, out_path = pathlib.Path(init_workdir), pathlib.Path(workdir)
    config = resolve_worst_case(config, init_path)  # the set's file, found once per system
    split, system, image_shape = build_for(config)
    _check_init(config, init_path, out_path, split)
    trained_params, trained_stats, _ = load_variables(init_path, system, config, image_shape)
    method_split = split
    if config.forget.expand:
        flags = flag_like_erased(system, trained_params, trained_stats, split.erased_images,
                                 split.erased_labels, split.remain_images, split.remain_labels,
                                 batch_size=config.eval_batch_size)
        method_split = move_to_erased(split, flags)
    out = _open_workdir(config, out_path, method_split, overwrite)
    # Every system is read by the trained system's receiver (`evaluation.receiver`), so it is
    # kept with the result: `evaluate_workdir` reads the unlearned workdir alone.
    original_receiver = jax.device_get(receiver_of(trained_params, trained_stats))
    saved = out.saved_config() if out.latest_step() is not None else None
    trained = (trained_params, trained_stats)
    if config.evaluation.probes:  # read after the method, whose steps donate their inputs
        trained = jax.device_get(trained)
    return _Job(config, parallel, split, method_split, system, image_shape, out_path, out,
                trained, original_receiver, saved)


def _run_alone(job: _Job) -> tuple[Any, Any, dict[str, Any]]:
    """The job's method run on its own (or its finished result, reused)."""
    if job.saved is not None:
        logging.info("%s: reusing the finished result in %s", job.config.unlearning.method,
                     job.out_path)
        params, batch_stats, _ = load_variables(job.out_path, job.system, job.config,
                                                job.image_shape)
        return params, batch_stats, job.saved["run"]
    return RUNNERS[job.config.unlearning.method](job.config, job.system, job.method_split,
                                                 *job.trained,
                                                 job.out_path, job.image_shape, job.parallel)


def _finish(job: _Job, outcome: tuple[Any, Any, dict[str, Any]], *,
            reference_workdir: str | None, samples_file: str | None = None) -> dict[str, Any]:
    """Saves a new result, evaluates it and writes results.json."""
    config, split, method = job.config, job.split, job.config.unlearning.method
    params, batch_stats, run_info = outcome
    if job.saved is None:
        job.out.save(run_info["steps"], {"params": params, "batch_stats": batch_stats,
                                         **receiver_entries(job.original_receiver)}, config,
                     {"kind": "unlearned", "method": method, "run": run_info,
                      "stores_original_receiver": True,
                      "unlearning_fingerprint": _unlearning_fingerprint(config, job.method_split)})
    job.out.close()
    # Evaluated on each process's default device from host copies: the mesh is for the steps.
    params, batch_stats = jax.device_get((params, batch_stats))

    results = evaluate(job.system, params, batch_stats, split, config, job.image_shape,
                       reference_workdir=reference_workdir, forgotten=job.method_split,
                       original_receiver=job.original_receiver, samples_file=samples_file,
                       original=job.trained,
                       retrained=(params, batch_stats) if method == "retrain" else None)
    results.update(expansion_summary(split, job.method_split))
    if not split.backdoor:
        results["forget_sha256"] = ids_digest(split.erased_indices)
    results.update({"method": method, **{k: v for k, v in run_info.items() if k != "history"},
                    "history": run_info.get("history", []), "dataset": config.dataset,
                    "devices": job.parallel.size, "processes": jax.process_count(),
                    "model_sha256": model_digest(params, batch_stats)})
    if is_primary():
        write_json_atomic(job.out_path / RESULTS_FILE, results)
    if split.backdoor:
        logging.info("%s: backdoor %.3f%s, clean accuracy %.3f, MSE clean %.3f, %.3f s (+%.2f s "
                     "compile)", method, results["backdoor_accuracy"],
                     f" (every triggered image, {split.num_unknown} of them not in D_e: "
                     f"{results['backdoor_accuracy_all']:.3f})" if split.num_unknown else "",
                     results["accuracy_clean"], results["mse_clean"], results["unlearn_seconds"],
                     results["compile_seconds"])
    else:
        logging.info("%s (%s forget set, %d samples): MSE erased %.3f (held-out %.3f), accuracy "
                     "erased %.3f, test %.3f; stopped by %s; %.3f s (+%.2f s compile)", method,
                     split.kind, len(split.erased_indices), results["mse_erased"],
                     results["mse_heldout"], results["accuracy_erased"], results["accuracy_test"],
                     results.get("stopped_by"), results["unlearn_seconds"],
                     results["compile_seconds"])
    return results


def unlearn_and_evaluate_many(configs: Sequence[ml_collections.ConfigDict],
                              init_workdirs: Sequence[str], workdirs: Sequence[str], *,
                              reference_workdirs: Sequence[str | None] | None = None,
                              overwrite: bool = False,
                              samples_files: Sequence[str | None] | None = None
                              ) -> list[dict[str, Any] | NonFiniteError]:
    """`unlearn_and_evaluate` of several runs (seeds, forget requests) of one method: the runs
    that are not finished yet and can share a program (`erased_loops_together`) run as one
    vmapped program, the others one by one; each result equals its run alone.

    Returns one entry per run: its results, or the `NonFiniteError` that ended it (the other
    runs are unaffected: a batch with a diverging run is rerun one by one).
    """
    references = reference_workdirs or [None] * len(configs)
    samples = samples_files or [None] * len(configs)
    jobs = [_prepare(config, init, out, overwrite=overwrite)
            for config, init, out in zip(configs, init_workdirs, workdirs)]
    todo = [job for job in jobs if job.saved is None]
    together: dict[int, tuple[Any, Any, dict[str, Any]]] = {}
    if len(todo) > 1 and todo[0].config.unlearning.method in ERASED_LOOP_METHODS:
        try:
            outcomes = erased_loops_together([job.config for job in todo], todo[0].system,
                                             [job.method_split for job in todo],
                                             [job.trained for job in todo])
        except NonFiniteError as error:
            logging.warning("%s; running the runs one by one", error)
            outcomes = None
        if outcomes is not None:
            together = {id(job): outcome for job, outcome in zip(todo, outcomes)}
    results: list[dict[str, Any] | NonFiniteError] = []
    for job, reference, samples_file in zip(jobs, references, samples):
        try:
            outcome = together.get(id(job)) or _run_alone(job)
        except NonFiniteError as error:
            job.out.close()
            results.append(error)
            continue
        results.append(_finish(job, outcome, reference_workdir=reference,
                               samples_file=samples_file))
    return results


def _remain_set(config: ml_collections.ConfigDict, split: ErasureSplit):
    """D_r as the training recipe sees it: with `train.crop_once`, the training set's own
    copies (cropped once, as the original system saw them)."""
    if config.train.crop_once:
        keep = ~split.train_is_erased
        return split.train_images[keep], split.train_labels[keep]
    return split.remain_images, split.remain_labels


def _finetune(config: ml_collections.ConfigDict, system: System, split: ErasureSplit, params,
              batch_stats, workdir: pathlib.Path, image_shape,
              parallel: DataParallel) -> tuple[dict, dict, dict]:
    """The training recipe's codec phase on D_r from the trained system, fresh optimisers (with
    the decayed ℓ1 penalty for `l1_sparse`)."""
    del image_shape
    images, labels = _remain_set(config, split)
    recipe = finetune_recipe(config, len(images))
    name = config.unlearning.method
    state, report = fit(system, recipe, config, training.train_state_from(params, batch_stats,
                                                                           recipe),
                        images, labels, parallel=parallel, name=name, workdir=workdir,
                        summaries_subdir=name, when_non_finite="; no state was saved")
    info = run_info(report, recipe.total_epochs)
    info.update(stop_rule=f"fixed: {recipe.total_epochs} epochs over D_r", stopped_by="epochs")
    return state.params, state.batch_stats, info


def _retrain(config: ml_collections.ConfigDict, system: System, split: ErasureSplit, params,
             batch_stats, workdir: pathlib.Path, image_shape,
             parallel: DataParallel) -> tuple[dict, dict, dict]:
    """Exact unlearning: the original recipe from scratch on D_r, checkpointed as training is
    (in `workdir/retrain_checkpoints`, so an interrupted retraining resumes)."""
    del params, batch_stats  # exact unlearning starts from scratch
    recipe = recipe_of(config)
    images, labels = _remain_set(config, split)
    state, report = fit_with_checkpoints(system, recipe, config, workdir, images, labels,
                                         parallel=parallel, kind="retrain", image_shape=image_shape,
                                         subdir=RETRAIN_PROGRESS_DIR,
                                         data={**split.source, "forget": forget_fingerprint(split)})
    info = run_info(report, recipe.total_epochs)
    info.update(stop_rule=f"fixed: the training recipe's {recipe.total_epochs} epochs over D_r",
                stopped_by="epochs")
    return state.params, state.batch_stats, info


# How each method runs in a workdir (`config.METHODS` names them all).
RUNNERS = {**{name: erased_loop for name in ERASED_LOOP_METHODS},
           "ssd": ssd_pass, "l1_sparse": _finetune, "finetune": _finetune, "retrain": _retrain}

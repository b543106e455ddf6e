"""Unlearning a trained system: restore it, run a method, save the result, evaluate (spec §4–§8).

`unlearn_and_evaluate(config, init_workdir, workdir)` is the library entry of `scu-unlearn`. It
never writes into `init_workdir` (opened read-only), and it refuses a `workdir` that holds the
result of another method or configuration.
"""

from __future__ import annotations

import pathlib
from typing import Any

import chex
import jax
import ml_collections
from absl import logging

from scu_jax.runs.checkpointing import CHECKPOINT_DIR, Checkpoints
from scu_jax.errors import CheckpointMismatchError, CheckpointReadError
from scu_jax.runs.files import check_workdir, remove_run_outputs, write_json_atomic
from scu_jax.config import config_from_json, method_config, training_fingerprint, validate_config
from scu_jax.evaluation import full_evaluation, save_samples
from scu_jax.models import System, init_system, receiver_of
from scu_jax.parallel import barrier, data_parallel, is_primary
from scu_jax.errors import NonFiniteError
from scu_jax.runs.train import build_for, fit, fit_with_checkpoints, initial_state
from scu_jax.methods import ERASED_LOOP_METHODS, TRAINING_METHODS, run_erased_loop

RESULTS_FILE = "results.json"
RETRAIN_PROGRESS_DIR = "retrain_checkpoints"


def _unlearning_fingerprint(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config fields a method's result depends on (so a rerun may reuse it)."""
    unlearning = config.unlearning.to_dict()
    method = unlearning.pop("method")
    unlearning.pop("per_method", None)  # applied by `method_config` before this is called
    if method == "retrain":
        unlearning = {}  # the training recipe alone
    elif method == "finetune":
        unlearning = {k: unlearning[k] for k in ("learning_rate", "batch_size", "finetune_epochs")}
    else:
        unlearning.pop("finetune_epochs")
    return {"training": training_fingerprint(config), "unlearning": unlearning}


def _restore(workdir: str | pathlib.Path, system: System, config: ml_collections.ConfigDict,
             image_shape: tuple[int, ...]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restores any saved state read-only: `({"params", "batch_stats"[, "original_receiver"]},
    saved_metadata)`."""
    checkpoints = Checkpoints(workdir, read_only=True)
    if checkpoints.latest_step() is None:
        raise FileNotFoundError(f"{pathlib.Path(workdir)} holds no checkpoint")
    meta = checkpoints.saved_config()
    if meta.get("kind") == "unlearned":
        variables = init_system(system, jax.random.PRNGKey(0), image_shape)
        target = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
        if meta.get("stores_original_receiver"):
            target.update(_receiver_entries(receiver_of(variables["params"], variables["batch_stats"])))
        return checkpoints.restore(target), meta
    state = checkpoints.restore(initial_state(system, config, image_shape))
    return {"params": state.params, "batch_stats": state.batch_stats}, meta


def _receiver_entries(receiver: tuple[Any, Any]) -> dict[str, Any]:
    """How an unlearned checkpoint stores the original receiver (its statistics only if it has
    BatchNorm, so that MLP-receiver checkpoints keep their layout)."""
    receiver_params, receiver_stats = receiver
    entries = {"original_receiver": receiver_params}
    if receiver_stats is not None:
        entries["original_receiver_batch_stats"] = receiver_stats
    return entries


def _original_receiver(restored: dict[str, Any]) -> tuple[Any, Any] | None:
    if "original_receiver" not in restored:
        return None
    return restored["original_receiver"], restored.get("original_receiver_batch_stats")


def load_variables(workdir: str | pathlib.Path, system: System, config: ml_collections.ConfigDict,
                   image_shape: tuple[int, ...]) -> tuple[dict, dict, dict[str, Any]]:
    """Reads the system variables of any saved state (trained or unlearned), read-only.

    Returns `(params, batch_stats, saved_metadata)`.
    """
    restored, meta = _restore(workdir, system, config, image_shape)
    return restored["params"], restored["batch_stats"], meta


def _check_workdirs(config: ml_collections.ConfigDict, init_workdir: pathlib.Path,
                    workdir: pathlib.Path, overwrite: bool = False) -> Checkpoints:
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
    total_epochs = config.train.receiver_epochs + config.train.epochs
    if trained.latest_step() != total_epochs:
        raise ValueError(f"training in --init_workdir={init_workdir} is unfinished (epoch "
                         f"{trained.latest_step()} of {total_epochs}); rerun scu-train to finish it")
    try:
        _check_reusable(config, workdir)
    except (CheckpointMismatchError, CheckpointReadError):
        if not overwrite:
            raise
        logging.warning("--overwrite: deleting the unlearning result of another configuration in %s",
                        workdir)
        if is_primary():
            remove_run_outputs(workdir, (CHECKPOINT_DIR, RETRAIN_PROGRESS_DIR, RESULTS_FILE))
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
    return _unlearning_fingerprint(config_from_json(stored))


def _check_reusable(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> None:
    """Raises unless `workdir` is empty or holds (progress of) this very method and config."""
    out = Checkpoints(workdir)
    if out.latest_step() is not None:
        saved = out.saved_config()
        wanted = _unlearning_fingerprint(config)
        if (saved.get("method"), _on_todays_schema(saved)) != (config.unlearning.method, wanted):
            raise CheckpointMismatchError(
                f"{workdir} already holds an unlearning result of another method or configuration "
                f"(method {saved.get('method')!r}); use another --workdir, or --overwrite to "
                "replace it")
    if config.unlearning.method == "retrain":
        Checkpoints(workdir, subdir=RETRAIN_PROGRESS_DIR).check_compatible(config)


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
    validate_config(config)
    config = method_config(config)  # the method's `unlearning.per_method` entry applied
    parallel = data_parallel(config)  # the mesh's errors before any work
    method = config.unlearning.method
    init_path, out_path = pathlib.Path(init_workdir), pathlib.Path(workdir)
    out = _check_workdirs(config, init_path, out_path, overwrite)
    split, system, image_shape = build_for(config)

    trained_params, trained_stats, _ = load_variables(init_path, system, config, image_shape)
    # Every system is read by the trained system's receiver (`evaluation.receiver`), so it is
    # kept with the result: `evaluate_workdir` reads the unlearned workdir alone.
    original_receiver = jax.device_get(receiver_of(trained_params, trained_stats))
    saved_meta = out.saved_config() if out.latest_step() is not None else None
    if saved_meta is not None:
        logging.info("%s: reusing the finished result in %s", method, out_path)
        params, batch_stats, _ = load_variables(out_path, system, config, image_shape)
        run_info = saved_meta["run"]
    else:
        params, batch_stats, run_info = _run_method(method, system, config, split, trained_params,
                                                    trained_stats, out_path, image_shape)
        try:
            chex.assert_tree_all_finite((params, batch_stats))
        except AssertionError:
            raise NonFiniteError(f"{method}: the unlearned parameters are not finite; nothing saved") from None
        out.save(run_info["steps"], {"params": params, "batch_stats": batch_stats,
                                     **_receiver_entries(original_receiver)}, config,
                 {"kind": "unlearned", "method": method, "run": run_info,
                  "stores_original_receiver": True,
                  "unlearning_fingerprint": _unlearning_fingerprint(config)})
    out.close()
    # Evaluated on each process's default device from host copies: the mesh is for the steps.
    params, batch_stats = jax.device_get((params, batch_stats))

    reference = None
    if reference_workdir is not None:
        ref_params, ref_stats, _ = load_variables(reference_workdir, system, config, image_shape)
        reference = (ref_params, ref_stats)
    results = full_evaluation(system, params, batch_stats, split, config, reference=reference,
                              original_receiver=original_receiver)
    if samples_file is not None:
        save_samples(system, params, batch_stats, split, config, samples_file)
    results.update({"method": method, **{k: v for k, v in run_info.items() if k != "history"},
                    "history": run_info.get("history", []), "dataset": config.dataset,
                    "devices": parallel.size, "processes": jax.process_count()})
    if is_primary():
        write_json_atomic(out_path / RESULTS_FILE, results)
    logging.info("%s: backdoor %.3f, clean accuracy %.3f, MSE clean %.3f, %.3f s (+%.2f s compile)",
                 method, results["backdoor_accuracy"], results["accuracy_clean"],
                 results["mse_clean"], results["unlearn_seconds"], results["compile_seconds"])
    return results


def _run_method(method: str, system: System, config: ml_collections.ConfigDict, split, params,
                batch_stats, workdir: pathlib.Path, image_shape) -> tuple[dict, dict, dict[str, Any]]:
    if method in ERASED_LOOP_METHODS:
        algorithm = ERASED_LOOP_METHODS[method](config, system)
        state, report = run_erased_loop(algorithm, method, system,
                                        algorithm.init(params, batch_stats), split, config)
        info = {"unlearn_seconds": report.unlearn_seconds, "compile_seconds": report.compile_seconds,
                "steps": report.steps, "epochs": report.epochs, "history": report.history}
        return state.params, state.batch_stats, info
    recipe = TRAINING_METHODS[method](config, system)
    images, labels = split.remain_images, split.remain_labels
    if config.train.crop_once:
        # The training set's own copies of D_r (cropped once, as the original system saw them).
        keep = ~split.train_is_erased
        images, labels = split.train_images[keep], split.train_labels[keep]
    if method == "retrain":
        # Exact unlearning: the original recipe from scratch on D_r, checkpointed as training is.
        state, report = fit_with_checkpoints(system, recipe.config, workdir, images, labels,
                                             kind="retrain", image_shape=image_shape,
                                             subdir=RETRAIN_PROGRESS_DIR)
    else:
        state, report = fit(system, recipe.config, recipe.init(params, batch_stats), images,
                            labels, name=method)
    info = {"unlearn_seconds": report.seconds, "compile_seconds": report.compile_seconds,
            "steps": report.steps,
            "epochs": recipe.config.train.receiver_epochs + recipe.config.train.epochs}
    return state.params, state.batch_stats, info


def evaluate_workdir(workdir: str, *, reference_workdir: str | None = None,
                     output: str | None = None, samples_file: str | None = None) -> dict[str, Any]:
    """Evaluates the system saved in `workdir` under the config stored with it (read only).

    Args:
      workdir: any scu-train or scu-unlearn workdir.
      reference_workdir: optional `retrain` result to measure the distance to.
      output: optional JSON file for the results (written atomically; never inside `workdir`'s
        checkpoints).
      samples_file: optional .npz for the report's reconstructions and membership scores.
    """
    checkpoints = Checkpoints(workdir, read_only=True)
    if checkpoints.latest_step() is None:
        raise FileNotFoundError(f"--workdir={workdir} holds no checkpoint")
    meta = checkpoints.saved_config()
    config = config_from_json(meta["config"])
    validate_config(config)
    split, system, image_shape = build_for(config)
    restored, _ = _restore(workdir, system, config, image_shape)
    if meta.get("kind") == "unlearned" and "original_receiver" not in restored:
        logging.warning("%s was saved before unlearned systems kept the original receiver: its own "
                        "receiver reads every metric", workdir)
    params, batch_stats = restored["params"], restored["batch_stats"]
    reference = None
    if reference_workdir is not None:
        ref_params, ref_stats, _ = load_variables(reference_workdir, system, config, image_shape)
        reference = (ref_params, ref_stats)
    results = full_evaluation(system, params, batch_stats, split, config, reference=reference,
                              original_receiver=_original_receiver(restored))
    if samples_file is not None:
        save_samples(system, params, batch_stats, split, config, samples_file)
    results.update({"kind": meta.get("kind"), "method": meta.get("method", "original"),
                    "checkpoint_step": checkpoints.latest_step()})
    if output is not None:
        write_json_atomic(output, results)
    return results

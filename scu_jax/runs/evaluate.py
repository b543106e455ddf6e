"""Evaluating a saved system in its workdir under the config stored with it (`scu-evaluate`)."""

from __future__ import annotations

from typing import Any

import ml_collections
import numpy as np
from absl import logging

from scu_jax.config import config_from_json, validate_config
from scu_jax.data import ErasureSplit, ids_digest
from scu_jax.errors import CheckpointMismatchError
from scu_jax.evaluation import Protocol, full_evaluation, sample_outputs
from scu_jax.models import System
from scu_jax.probes import probe_system
from scu_jax.runs.build import build_for, protocol_of
from scu_jax.runs.checkpointing import Checkpoints, model_digest
from scu_jax.runs.files import atomic_path, write_json_atomic
from scu_jax.runs.saved import load_variables, original_receiver, restore_saved


def evaluate(system: System, params, batch_stats, split: ErasureSplit,
             config: ml_collections.ConfigDict, image_shape: tuple[int, ...], *,
             reference_workdir: str | None = None, original_receiver=None,
             samples_file: str | None = None, forgotten: ErasureSplit | None = None,
             original=None, retrained=None) -> dict[str, Any]:
    """`evaluation.full_evaluation` under `config`'s protocol, with the distance to the system
    saved in `reference_workdir` (retraining) and the report's samples written to `samples_file`,
    each if given. `forgotten`: what the method was given, where not `split` (`forget.expand`):
    the reference must have retrained without it. With `config.evaluation.probes`, the probes
    of `scu_jax.probes` too, CKA against `original` and `retrained` (each a `(params,
    batch_stats)` pair; retraining is `reference_workdir`'s where that is given)."""
    protocol = protocol_of(config)
    reference = None
    if reference_workdir is not None:
        check_reference(reference_workdir, forgotten or split)
        ref_params, ref_stats, _ = load_variables(reference_workdir, system, config, image_shape)
        reference = (ref_params, ref_stats)
    results = full_evaluation(system, params, batch_stats, split, protocol, reference=reference,
                              original_receiver=original_receiver)
    if config.evaluation.probes and len(split.erased_labels) > 1:
        references = {name: pair for name, pair in (("original", original),
                                                    ("retrain", reference or retrained)) if pair}
        results.update(probe_system(system, params, batch_stats, split, protocol,
                                    snrs=tuple(config.evaluation.probe_snrs),
                                    attack_batch=config.train.batch_size, references=references))
    if samples_file is not None:
        save_samples(system, params, batch_stats, split, protocol, samples_file)
    return results


def check_reference(reference_workdir: str, split: ErasureSplit) -> None:
    """Raises `CheckpointMismatchError` unless `reference_workdir` holds a retraining on this very
    forget set (the distance to retraining and the calibrated attack would read another one)."""
    meta = Checkpoints(reference_workdir, read_only=True).saved_config()
    if meta.get("method") != "retrain":
        raise CheckpointMismatchError(f"--reference_workdir={reference_workdir} holds a "
                                      f"{meta.get('method') or meta.get('kind')!r} result, not a "
                                      "retraining")
    if not split.backdoor or split.known_fraction < 1 or split.num_flagged:
        saved = meta.get("unlearning_fingerprint", {}).get("forget", {})
        # A retraining that erased flagged samples besides (`forget.expand`) is the reference of
        # the systems given its known part too: the original, read on that part.
        if ids_digest(split.erased_indices) not in (
                saved.get("sha256"), None if split.num_flagged else saved.get("known_sha256")):
            raise CheckpointMismatchError(f"--reference_workdir={reference_workdir} retrained "
                                          "on another forget set than this one")


def evaluate_workdir(workdir: str, *, reference_workdir: str | None = None,
                     output: str | None = None, samples_file: str | None = None,
                     config: ml_collections.ConfigDict | None = None,
                     original_workdir: str | None = None, probes: bool = False
                     ) -> dict[str, Any]:
    """Evaluates the system saved in `workdir` under the config stored with it (read only).

    Args:
      workdir: any scu-train or scu-unlearn workdir.
      reference_workdir: optional `retrain` result to measure the distance to.
      output: optional JSON file for the results (written atomically; never inside `workdir`'s
        checkpoints).
      samples_file: optional .npz for the report's reconstructions and membership scores.
      config: read the system under this config (same training fields) instead: a trained
        clean-set system on a given forget set (`scu-pipeline`'s original row).
      probes: add the probes whatever the config says (`config.evaluation.probes`).
      original_workdir: the trained system an unlearned one came from: the probes' CKA against
        it (`config.evaluation.probes`; a trained system is its own original).
    """
    checkpoints = Checkpoints(workdir, read_only=True)
    if checkpoints.latest_step() is None:
        raise FileNotFoundError(f"--workdir={workdir} holds no checkpoint")
    meta = checkpoints.saved_config()
    if config is None:
        config = config_from_json(meta["config"])
        # A clean-set system before any request knows no forget set: its training set is read.
        split_args = {"training": meta.get("kind") == "train"}
    else:
        checkpoints.check_compatible(config)
        split_args = {}
    if probes:
        config = config.copy_and_resolve_references()
        config.evaluation.probes = True
    validate_config(config)
    split, system, image_shape = build_for(config, **split_args)
    saved_forget = meta.get("unlearning_fingerprint", {}).get("forget")
    if saved_forget and saved_forget.get("sha256") != ids_digest(split.erased_indices):
        raise CheckpointMismatchError(
            f"{workdir} unlearned another forget set than its config names now (the request "
            f"file {config.forget.ids_file or ''} changed since?)")
    restored, _ = restore_saved(workdir, system, config, image_shape)
    own = (restored["params"], restored["batch_stats"])
    original = own if meta.get("kind") == "train" else None
    if original_workdir is not None and original is None and config.evaluation.probes:
        original = load_variables(original_workdir, system, config, image_shape)[:2]
    if meta.get("kind") == "unlearned" and "original_receiver" not in restored:
        logging.warning("%s was saved before unlearned systems kept the original receiver: its own "
                        "receiver reads every metric", workdir)
    results = evaluate(system, restored["params"], restored["batch_stats"], split, config,
                       image_shape, reference_workdir=reference_workdir,
                       original_receiver=original_receiver(restored), samples_file=samples_file,
                       original=original,
                       retrained=own if meta.get("method") == "retrain" else None)
    results.update({"kind": meta.get("kind"), "method": meta.get("method", "original"),
                    "checkpoint_step": checkpoints.latest_step(),
                    "model_sha256": model_digest(restored["params"], restored["batch_stats"])})
    if output is not None:
        write_json_atomic(output, results)
    return results


def save_samples(system: System, params, batch_stats, split: ErasureSplit, protocol: Protocol,
                 path: str) -> None:
    """Writes `evaluation.sample_outputs` (the report's reconstructions and membership scores) to
    an .npz file, all at once or not at all."""
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, **sample_outputs(system, params, batch_stats, split, protocol))

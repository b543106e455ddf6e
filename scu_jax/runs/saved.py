"""Reading a saved system (trained, retrained or unlearned) from a workdir, read-only, and the
layout an unlearned checkpoint keeps the original receiver in."""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import ml_collections

from scu_jax.methods import training
from scu_jax.models import System, init_system, receiver_of
from scu_jax.runs.build import recipe_of
from scu_jax.runs.checkpointing import Checkpoints


def restore_saved(workdir: str | pathlib.Path, system: System, config: ml_collections.ConfigDict,
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
            target.update(receiver_entries(receiver_of(variables["params"], variables["batch_stats"])))
        return checkpoints.restore(target), meta
    state = checkpoints.restore(training.initial_state(system, recipe_of(config), config.seed,
                                                       image_shape))
    return {"params": state.params, "batch_stats": state.batch_stats}, meta


def receiver_entries(receiver: tuple[Any, Any]) -> dict[str, Any]:
    """How an unlearned checkpoint stores the original receiver (its statistics only if it has
    BatchNorm, so that MLP-receiver checkpoints keep their layout)."""
    receiver_params, receiver_stats = receiver
    entries = {"original_receiver": receiver_params}
    if receiver_stats is not None:
        entries["original_receiver_batch_stats"] = receiver_stats
    return entries


def original_receiver(restored: dict[str, Any]) -> tuple[Any, Any] | None:
    if "original_receiver" not in restored:
        return None
    return restored["original_receiver"], restored.get("original_receiver_batch_stats")


def load_variables(workdir: str | pathlib.Path, system: System, config: ml_collections.ConfigDict,
                   image_shape: tuple[int, ...]) -> tuple[dict, dict, dict[str, Any]]:
    """Reads the system variables of any saved state (trained or unlearned), read-only.

    Returns `(params, batch_stats, saved_metadata)`.
    """
    restored, meta = restore_saved(workdir, system, config, image_shape)
    return restored["params"], restored["batch_stats"], meta

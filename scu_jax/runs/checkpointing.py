"""All checkpoint code: Orbax `CheckpointManager` saving the state and the config together.

A checkpoint directory holds steps `WORKDIR/checkpoints/<step>/{state,config}`; Orbax writes each
step to a temporary directory and renames it when complete, so an interrupted save leaves the
previous step as the latest. States are restored into an abstract target (shapes and dtypes
from `jax.eval_shape`), never unpickled.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from scu_jax.config import config_from_json, first_difference, training_fingerprint
from scu_jax.errors import CheckpointMismatchError, CheckpointReadError

CHECKPOINT_DIR = "checkpoints"


class Checkpoints:
    """The checkpoints of one run directory.

    Args:
      workdir: the run directory; checkpoints go to `workdir/<subdir>`.
      max_to_keep: how many recent steps are kept.
      read_only: open someone else's checkpoints (e.g. a trained system to unlearn from): saving
        is refused and nothing in the directory is created, changed or deleted.
      subdir: the folder under `workdir`.
    """

    def __init__(self, workdir: str | os.PathLike, *, max_to_keep: int = 2, read_only: bool = False,
                 subdir: str = CHECKPOINT_DIR):
        self.directory = pathlib.Path(workdir).absolute() / subdir
        self.read_only = read_only
        options = (ocp.CheckpointManagerOptions(read_only=True, create=False) if read_only else
                   ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=False))
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_names=("state", "config"))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def latest_kind(self) -> str | None:
        """What the latest checkpoint holds ("train", "retrain", "unlearned", ...), if any."""
        return None if self.latest_step() is None else self.saved_config().get("kind")

    def saved_config(self, step: int | None = None) -> dict[str, Any]:
        """The config JSON stored with `step` (the latest by default)."""
        step = self.latest_step() if step is None else step
        path = self.directory / str(step) / "config" / "metadata"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise CheckpointReadError(
                f"checkpoint {self.directory / str(step)} is unreadable: cannot read its config "
                f"({type(error).__name__})"
            ) from None

    def check_compatible(self, config: ml_collections.ConfigDict) -> None:
        """Raises `CheckpointMismatchError` if the latest checkpoint is of another training config."""
        if self.latest_step() is None:
            return
        # Rebuilt on today's schema: a field added since the checkpoint was written takes its
        # default, which is the behaviour the checkpoint was trained with.
        saved = training_fingerprint(config_from_json(self.saved_config().get("training", {})))
        difference = first_difference(saved, training_fingerprint(config), "in the checkpoint")
        if difference:
            raise CheckpointMismatchError(
                f"{self.directory} holds a checkpoint of a different configuration ({difference});"
                " use another --workdir, or --overwrite to replace it"
            )

    def save(self, step: int, state: Any, config: ml_collections.ConfigDict,
             extra: dict[str, Any] | None = None) -> None:
        """Saves `state` and the config (its training fingerprint plus `extra`) at `step`."""
        if self.read_only:
            raise PermissionError(f"{self.directory} was opened read-only")
        self.directory.mkdir(parents=True, exist_ok=True)
        meta = {
            "training": training_fingerprint(config),
            "config": json.loads(config.to_json_best_effort()),
        }
        meta.update(extra or {})
        self._manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(meta)),
        )

    def restore(self, target: Any, step: int | None = None) -> Any:
        """Restores the state at `step` (latest by default) into the structure of `target`."""
        step = self.latest_step() if step is None else step
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        try:
            restored = self._manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
            )
        except Exception as error:  # Orbax raises many types for damaged files; report one line.
            message = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
            raise CheckpointReadError(
                f"checkpoint {self.directory / str(step)} cannot be restored: {message}"
            ) from None
        return restored.state

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

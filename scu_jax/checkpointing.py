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
import tempfile
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from scu_jax.config import config_from_json, training_fingerprint

CHECKPOINT_DIR = "checkpoints"


class CheckpointMismatchError(ValueError):
    """A workdir holds a checkpoint that does not belong to the requested configuration."""


class CheckpointReadError(ValueError):
    """A checkpoint exists but cannot be read (truncated, corrupted or of another layout)."""


def _describe_difference(saved: dict[str, Any], wanted: dict[str, Any], prefix: str = "") -> str:
    for key in sorted(set(saved) | set(wanted)):
        a, b = saved.get(key), wanted.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found = _describe_difference(a, b, f"{prefix}{key}.")
            if found:
                return found
        elif a != b:
            return f"config.{prefix}{key} is {a!r} in the checkpoint but {b!r} now"
    return ""


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
        difference = _describe_difference(saved, training_fingerprint(config))
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

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def check_workdir(path: str | os.PathLike, flag: str = "--workdir") -> None:
    """Raises `ValueError` unless `path` is a directory, or could be created as one, writable.

    Creates nothing: a run checks its output directory before any work, so a path that is a file,
    or under a file, or in a directory it may not write, is refused in one line.
    """
    path = pathlib.Path(path).absolute()
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag}={path} exists and is not a directory")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{flag}={path} cannot be created: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{flag}={path} cannot be {'written' if existing == path else 'created'}: "
                         f"no write permission on {existing}")


def remove_run_outputs(workdir: str | os.PathLike, names: tuple[str, ...]) -> None:
    """Deletes the named entries of a run directory (for `--overwrite`), and nothing else in it."""
    import shutil

    root = pathlib.Path(workdir)
    for name in names:
        path = root / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def write_json_atomic(path: str | os.PathLike, payload: Any) -> None:
    """Writes JSON to a temporary file in the same directory and renames it over `path`."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise

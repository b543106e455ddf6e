"""All checkpoint code: Orbax `CheckpointManager` saving the state and the config together.

A checkpoint directory holds steps `WORKDIR/checkpoints/<step>/{state,config}`; Orbax writes each
step to a temporary directory and renames it when complete, so an interrupted save leaves the
previous step as the latest. States are restored into an abstract target (shapes and dtypes
from `jax.eval_shape`), never unpickled.

Every save records, in the step's metadata, `digests`: `state`, the sha256 of every array it
saved (`tree_digest`), and `model`, that of the parameters and BatchNorm statistics alone
(`model_digest`: which model this is, whatever optimiser state travels with it). Every restore
recomputes the first from the arrays it read and refuses a mismatch (`CheckpointReadError`): a
byte changed in the array files, or arrays swapped in from another checkpoint, are caught
before any work uses them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import re
import sys
from typing import Any, Iterator

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from scu_jax.config import config_from_json, first_difference, training_fingerprint
from scu_jax.errors import CheckpointMismatchError, CheckpointReadError, CheckpointWriteError

CHECKPOINT_DIR = "checkpoints"


def _host(leaf: Any) -> np.ndarray:
    # A multi-process run's state is replicated: each process reads its own copy.
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        leaf = leaf.addressable_data(0)
    return np.ascontiguousarray(np.asarray(leaf))


def tree_digest(tree: Any) -> str:
    """sha256 of a pytree's arrays, in tree order: each leaf's path, dtype, shape and bytes."""
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        array = _host(leaf)
        digest.update(f"{jax.tree_util.keystr(path)}|{array.dtype.str}|{array.shape}\n".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def model_digest(params: Any, batch_stats: Any) -> str:
    """The digest that names a model: its parameters and BatchNorm statistics (`tree_digest`)."""
    return tree_digest({"params": params, "batch_stats": batch_stats})


def _quiet_stray_callbacks() -> None:
    """When one array of a save or a restore fails, Orbax closes the operation's event loop while
    TensorStore still completes the other arrays' reads or writes; each then fails to call back
    into the closed loop, which Python prints as an unraisable "Event loop is closed" traceback
    around the one-line error. Those (and only those) are dropped, from the first `Checkpoints`
    on."""
    if getattr(sys.unraisablehook, "_drops_closed_loop_callbacks", False):
        return
    default = sys.unraisablehook

    def hook(unraisable) -> None:
        if not (isinstance(unraisable.exc_value, RuntimeError)
                and str(unraisable.exc_value) == "Event loop is closed"):
            default(unraisable)

    hook._drops_closed_loop_callbacks = True
    sys.unraisablehook = hook


def _first_line(error: BaseException) -> str:
    """An Orbax or TensorStore error in one short line (their messages run over many); a failed
    write is named by the operating system's reason ("No space left on device")."""
    text = " ".join(str(error).split()) or type(error).__name__
    failed_write = re.search(r"Failed to write \d+ bytes to file \d+: ([^\[]+?) \[os_error", text)
    if failed_write:
        return failed_write.group(1)
    for cut in (" See full TensorStore details", " [source locations="):
        text = text.split(cut)[0]
    return text if len(text) <= 240 else text[:240] + "…"


def _model_of(state: Any) -> tuple[Any, Any] | None:
    """A saved state's `(params, batch_stats)`: a training state's fields or a dict's keys."""
    if isinstance(state, dict):
        return (state["params"], state.get("batch_stats", {})) if "params" in state else None
    if hasattr(state, "params") and hasattr(state, "batch_stats"):
        return state.params, state.batch_stats
    return None


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
        self._closed = False
        _quiet_stray_callbacks()

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def model_digest(self, step: int | None = None) -> str | None:
        """The model digest recorded with `step` (the latest by default), if it was."""
        return self.saved_config(step).get("digests", {}).get("model")

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
        """Saves `state` and the config (its training fingerprint plus `extra`) at `step`, with
        the digests of its arrays and of its model (the module docstring)."""
        if self.read_only:
            raise PermissionError(f"{self.directory} was opened read-only")
        self.directory.mkdir(parents=True, exist_ok=True)
        model = _model_of(state)
        meta = {
            "training": training_fingerprint(config),
            "config": json.loads(config.to_json_best_effort()),
            "digests": {"state": tree_digest(state),
                        **({"model": model_digest(*model)} if model is not None else {})},
        }
        meta.update(extra or {})
        with self._writing():
            self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                             config=ocp.args.JsonSave(meta)))

    def restore(self, target: Any, step: int | None = None) -> Any:
        """Restores the state at `step` (latest by default) into the structure of `target`,
        checking it against the digest recorded when it was saved."""
        step = self.latest_step() if step is None else step
        recorded = self.saved_config(step).get("digests", {}).get("state")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        try:
            restored = self._manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
            ).state
        except Exception as error:  # Orbax raises many types for damaged files; report one line.
            self.close()
            raise CheckpointReadError(
                f"checkpoint {self.directory / str(step)} cannot be restored: {_first_line(error)}"
            ) from None
        if recorded is None:
            logging.warning("%s was saved before checkpoints recorded digests: its arrays are not "
                            "verified", self.directory / str(step))
        elif tree_digest(restored) != recorded:
            raise CheckpointReadError(
                f"checkpoint {self.directory / str(step)} does not hold what was saved: its "
                f"arrays' sha256 is not the {recorded[:16]}… recorded when it was saved (files "
                "changed, damaged or swapped)")
        return restored

    def close(self) -> None:
        """Waits for a save in flight and stops the manager's threads (again: a no-op)."""
        if self._closed:
            return
        self._closed = True
        try:
            with self._writing():
                self._manager.wait_until_finished()
        finally:
            self._manager.close()

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """A failed save (raised by Orbax when it is made, or when the next one, or the close,
        waits for it) as one line: the directory, the reason, what is still restorable."""
        try:
            yield
        except Exception as error:  # Orbax and TensorStore raise many types for one full disk.
            complete = sorted(int(p.name) for p in self.directory.iterdir()
                              if p.name.isdigit()) if self.directory.is_dir() else []
            kept = (f"the latest complete checkpoint is step {complete[-1]}, which the same "
                    "command resumes from" if complete else "no checkpoint is complete yet")
            raise CheckpointWriteError(f"cannot save a checkpoint in {self.directory}: "
                                       f"{_first_line(error)}; {kept}") from None

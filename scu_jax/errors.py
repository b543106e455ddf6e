"""Every error scu-jax raises on purpose, in one place.

Each message is one line that names what to change; the binaries turn the usage errors into that
line and exit status 2 (`binaries/common.py`), before any work starts where the check allows.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A config field holds a value outside what is allowed; the message is one line.

    Example:
      >>> try:
      ...     scu_jax.mesh_for(jax.device_count() + 1)
      ... except scu_jax.ConfigError as error:
      ...     print(str(error).split(":")[0])
      config.parallel.devices=...
    """


class DatasetUnavailableError(ValueError):
    """A dataset is not present (or not readable) in its data directory.

    Example:
      >>> import tempfile
      >>> try:
      ...     scu_jax.load_dataset("mnist", data_dir=tempfile.mkdtemp())
      ... except scu_jax.DatasetUnavailableError as error:
      ...     print(str(error).split(" in data_dir")[0])
      dataset 'mnist' is not prepared
    """


class CheckpointMismatchError(ValueError):
    """A workdir holds a checkpoint that does not belong to the requested configuration.

    Example:
      >>> import tempfile
      >>> from scu_jax.config import default_config
      >>> from scu_jax.runs.checkpointing import Checkpoints
      >>> checkpoints = Checkpoints(tempfile.mkdtemp())
      >>> checkpoints.save(1, {"w": jnp.zeros(2)}, default_config()); checkpoints.close()
      >>> other = default_config(); other.erasure.edr = 0.1
      >>> try:
      ...     checkpoints.check_compatible(other)
      ... except scu_jax.CheckpointMismatchError as error:
      ...     print("refused:", "erasure.edr" in str(error))
      refused: True
    """


class CheckpointReadError(ValueError):
    """A checkpoint exists but cannot be read (truncated, corrupted or of another layout).

    Example:
      >>> import pathlib, tempfile
      >>> from scu_jax.runs.checkpointing import Checkpoints
      >>> workdir = pathlib.Path(tempfile.mkdtemp())
      >>> (workdir / "checkpoints" / "3" / "config").mkdir(parents=True)
      >>> try:
      ...     Checkpoints(workdir).saved_config(3)
      ... except scu_jax.CheckpointReadError as error:
      ...     print(str(error).split(": ", 1)[1])
      cannot read its config (FileNotFoundError)
    """


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be saved (a full disk, a lost permission): the message is one line
    naming the directory, the reason and the latest checkpoint that is still complete. Not a
    usage error: the command is right, the machine failed it.

    Example:
      >>> import tempfile
      >>> from unittest import mock
      >>> from scu_jax.config import default_config
      >>> from scu_jax.runs.checkpointing import Checkpoints
      >>> checkpoints = Checkpoints(tempfile.mkdtemp())
      >>> full = mock.patch.object(checkpoints._manager, "save",
      ...                          side_effect=OSError(28, "No space left on device"))
      >>> try:
      ...     with full:
      ...         checkpoints.save(1, {"w": jnp.zeros(2)}, default_config())
      ... except scu_jax.CheckpointWriteError as error:
      ...     print(str(error).split(": ", 1)[1])
      [Errno 28] No space left on device; no checkpoint is complete yet
    """


class NonFiniteError(RuntimeError):
    """A loss or a parameter became NaN or infinite; the message names the run, phase and step.

    Example:
      >>> from scu_jax.methods import training
      >>> fresh = scu_jax.initial_state(system, recipe, seed=0, image_shape=(28, 28, 1))
      >>> broken = fresh.replace(params=jax.tree.map(lambda p: p * jnp.nan, fresh.params))
      >>> phases = training.phases(system, recipe, seed=0, num_examples=16)
      >>> try:
      ...     scu_jax.run(phases, broken, scu_jax.Examples(images, labels), key, name="train")
      ... except scu_jax.NonFiniteError as error:
      ...     print(str(error).split(" at ")[0])
      train: ...non-finite...
    """


class LedgerMismatchError(RuntimeError):
    """A deployment's ledger and its saved versions disagree (`scu-forget`); the message is one
    line naming the version. Not a usage error: the deployment itself is inconsistent.

    Example:
      >>> import pathlib, tempfile
      >>> from scu_jax.runs.deployment import read_ledger
      >>> deployment = pathlib.Path(tempfile.mkdtemp())
      >>> _ = (deployment / "ledger.jsonl").write_text("not json")
      >>> try:
      ...     read_ledger(deployment)
      ... except scu_jax.LedgerMismatchError as error:
      ...     print(str(error).split(", ", 1)[1])
      line 1 is not a JSON record
    """


class Interrupted(Exception):
    """A run stopped on SIGTERM or SIGINT (`scu_jax.runs.signals`): `signal` is its number and
    the message one line saying where it stopped and what was saved.

    Example:
      >>> import pickle
      >>> error = scu_jax.Interrupted(15, "interrupted by SIGTERM at epoch 3 of 7 (train): saved")
      >>> str(error), pickle.loads(pickle.dumps(error)).signal
      ('interrupted by SIGTERM at epoch 3 of 7 (train): saved', 15)
    """

    def __init__(self, signal: int, message: str):
        super().__init__(signal, message)  # both in `args`, so that it pickles (sweep workers)
        self.signal, self.message = signal, message

    def __str__(self) -> str:
        return self.message

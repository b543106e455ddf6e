"""The versions of a deployment: one Orbax checkpoint per applied forget request (`scu-forget`).

``DIR/versions/<n>/0/{state,config}`` holds version `n`: the system's parameters and BatchNorm
statistics, the original system's receiver (which reads every version's metrics) and, in its
metadata, the config it ran with and the ledger records of the request(s) it applied, with their
sample indices. A version is written under ``DIR/versions/.staging-<n>-<hex>`` and renamed into
place once complete (a directory rename is atomic), so ``versions/<n>`` is always whole. Only the
ledger (`runs/ledger.py`) makes a version current.
"""

from __future__ import annotations

import os
import pathlib
import secrets
import shutil
from typing import Any, Callable

import jax
import ml_collections
from absl import logging

from scu_jax.errors import CheckpointReadError
from scu_jax.models import System, init_system, receiver_of
from scu_jax.runs.checkpointing import Checkpoints
from scu_jax.runs.saved import original_receiver, receiver_entries

VERSIONS_DIR = "versions"
_STAGING_PREFIX = ".staging-"
# Written into versions/<n> once the ledger records version n: a recorded version the ledger no
# longer names was cut from it (one never recorded is an interrupted run's, to reuse or remove).
RECORDED_MARK = "RECORDED"
_STEP = 0  # each version directory is a one-step checkpoint directory


def versions_dir(deployment: pathlib.Path) -> pathlib.Path:
    return deployment / VERSIONS_DIR


def on_disk(deployment: pathlib.Path) -> list[int]:
    """The version numbers whose directories exist (staging directories aside), ascending."""
    root = versions_dir(deployment)
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit() and p.is_dir())


def metadata(deployment: pathlib.Path, version: int) -> dict[str, Any]:
    """The metadata saved with `version` (raises `CheckpointReadError` if it is unreadable)."""
    checkpoints = Checkpoints(versions_dir(deployment), read_only=True, subdir=str(version))
    if checkpoints.latest_step() is None:
        raise CheckpointReadError(f"{versions_dir(deployment) / str(version)} holds no saved "
                                  "version")
    return checkpoints.saved_config()


def load(deployment: pathlib.Path, version: int, system: System, image_shape: tuple[int, ...]
         ) -> tuple[dict, dict, tuple[Any, Any]]:
    """Restores `version`: `(params, batch_stats, original_receiver)` as host arrays."""
    variables = init_system(system, jax.random.PRNGKey(0), image_shape)
    params, batch_stats = variables["params"], variables["batch_stats"]
    target = {"params": params, "batch_stats": batch_stats,
              **receiver_entries(receiver_of(params, batch_stats))}
    checkpoints = Checkpoints(versions_dir(deployment), read_only=True, subdir=str(version))
    restored = jax.device_get(checkpoints.restore(target, step=_STEP))
    return restored["params"], restored["batch_stats"], original_receiver(restored)


def save(deployment: pathlib.Path, version: int, params, batch_stats, receiver: tuple[Any, Any],
         config: ml_collections.ConfigDict, extra: dict[str, Any],
         before_rename: Callable[[], None] = lambda: None) -> pathlib.Path:
    """Writes `version` under a staging name, then renames it to ``versions/<version>``.

    `receiver`: the original system's, kept with every version. `extra`: metadata saved beside
    the config. `before_rename` runs once the staging directory is complete (a test's kill
    point). Refuses to replace an existing version.
    """
    root = versions_dir(deployment)
    final = root / str(version)
    if final.exists():
        raise FileExistsError(f"{final} exists: a saved version is never replaced")
    staging_name = f"{_STAGING_PREFIX}{version}-{secrets.token_hex(4)}"
    checkpoints = Checkpoints(root, max_to_keep=1, subdir=staging_name)
    try:
        checkpoints.save(_STEP, {"params": params, "batch_stats": batch_stats,
                                 **receiver_entries(receiver)}, config,
                         {"kind": "version", "version": version, **extra})
        checkpoints.close()
        _fsync_tree(root / staging_name)
        before_rename()
        os.rename(root / staging_name, final)
        fsync_directory(root)
    except BaseException:
        shutil.rmtree(root / staging_name, ignore_errors=True)
        raise
    return final


def recorded(deployment: pathlib.Path, version: int) -> bool:
    """Whether the ledger has recorded `version` (`mark_recorded`)."""
    return (versions_dir(deployment) / str(version) / RECORDED_MARK).exists()


def mark_recorded(deployment: pathlib.Path, version: int) -> None:
    """Marks `version` as recorded by the ledger (after the ledger's rename), durably."""
    directory = versions_dir(deployment) / str(version)
    if not (directory / RECORDED_MARK).exists():
        (directory / RECORDED_MARK).touch()
        fsync_directory(directory)


def remove_leftovers(deployment: pathlib.Path, keep: Callable[[int], bool]) -> None:
    """Deletes, with a warning each, staging directories and the versions for which `keep` is
    false (a version no ledger record names: an interrupted request's, or another's)."""
    root = versions_dir(deployment)
    if not root.is_dir():
        return
    for path in sorted(root.iterdir()):
        if path.name.startswith(_STAGING_PREFIX):
            logging.warning("removing %s: a version an interrupted run did not finish saving", path)
            shutil.rmtree(path)
        elif path.name.isdigit() and not keep(int(path.name)) and not recorded(
                deployment, int(path.name)):
            logging.warning("removing %s: a version no ledger record names (left by an "
                            "interrupted run of another request)", path)
            shutil.rmtree(path)


def fsync_directory(path: pathlib.Path) -> None:
    """Makes a rename in `path` durable (POSIX: the directory entry is data of the directory)."""
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _fsync_tree(root: pathlib.Path) -> None:
    # Orbax finalises its own step directory; the files are flushed here so that the rename never
    # makes a version visible whose contents a power cut could still lose.
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    for path in sorted([root, *(p for p in root.rglob("*") if p.is_dir())], reverse=True):
        fsync_directory(path)

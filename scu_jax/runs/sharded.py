"""A sharded, sliced system in a workdir (`scu_jax.sharding`): training, its stages, evaluation.

WORKDIR/sharded.json (the manifest) names, for every shard, the checkpoint of each of its R
stages; WORKDIR/slices/<digest>/<stage> holds one. A stage's digest chains its parent's with the
rows it trained on (`sharding.chain_digest`; the chain starts from the training fingerprint and
the shard), so a checkpoint's name says exactly which samples it was trained on, and replaying
the requests gives the same names and, the steps being deterministic, the same bits.

`train_sharded(config, workdir)` trains (or resumes) every stage whose checkpoint is missing; a
deletion (`runs.sharded_requests.delete_from_sharded`) adds the erased samples to the manifest's
`excluded`, which changes the digests of the stages from the earliest slice that held one, in
the shards that held one, and runs the same `build_stages`: those stages, and only those, are
trained again, from the checkpoint before them, which never saw an erased sample; the
checkpoints that did see one are then deleted. The manifest is replaced atomically after the new checkpoints are saved, so an
interrupted deletion leaves the previous version whole (and a rerun reuses what it saved).
"""

from __future__ import annotations

import functools
import hashlib
import json
import pathlib
import shutil
import time
from typing import Any, NamedTuple, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging

from scu_jax import sharding
from scu_jax.config import config_from_json, training_fingerprint, validate_config
from scu_jax.data import ErasureSplit
from scu_jax.data.forget import ids_digest
from scu_jax.errors import CheckpointMismatchError, ConfigError, Interrupted, NonFiniteError
from scu_jax.evaluation import evaluate_system
from scu_jax.methods import training
from scu_jax.models import System, receiver_of, with_receiver
from scu_jax.runs import signals
from scu_jax.runs.build import build_for, load_split, protocol_of, recipe_of
from scu_jax.runs.checkpointing import CHECKPOINT_DIR, Checkpoints
from scu_jax.runs.files import RESULTS_FILE, check_workdir, remove_run_outputs, write_json_atomic

MANIFEST = "sharded.json"
STORE = "slices"
_COMPILED: dict[tuple, Any] = {}  # a stage program's executables, by (program, shards, rows)


class Setup(NamedTuple):
    """A sharded configuration, checked, with its training data and system built."""

    config: ml_collections.ConfigDict
    split: ErasureSplit  # the training set's split (the backdoor protocol's or the clean one)
    system: System
    image_shape: tuple[int, ...]
    shard: np.ndarray  # the shard of every training row
    slice_: np.ndarray  # its slice within the shard
    stage_epochs: tuple[int, int]  # (receiver, codec) epochs of each stage


def setup(config: ml_collections.ConfigDict, split_args: dict | None = None) -> Setup:
    """Validates a sharded config and builds what its runs need (one-line errors before any
    work: S·R slices must each hold a batch)."""
    validate_config(config)
    if config.shards.count < 2:
        raise ConfigError(f"config.shards.count={config.shards.count}: a sharded system needs at "
                          "least 2 shards (1 is the single system of scu-train)")
    if config.parallel.devices != 1:
        raise ConfigError("config.shards: a sharded system trains on one device "
                          "(config.parallel.devices=1)")
    split, system, image_shape = build_for(config, **(split_args or {"training": True}))
    count, slices = config.shards.count, config.shards.slices
    num_train, batch = len(split.train_labels), config.train.batch_size
    if num_train // (count * slices) < batch:
        raise ConfigError(f"config.shards: {count} shards × {slices} slices of {num_train} "
                          f"training images leave {num_train // (count * slices)} a slice, fewer "
                          f"than a batch ({batch}): use fewer shards or slices")
    shard, slice_ = sharding.assign_shards(split.train_labels, count, slices, config.seed)
    epochs = (sharding.stage_epochs(config.train.receiver_epochs, slices),
              sharding.stage_epochs(config.train.epochs, slices))
    return Setup(config, split, system, tuple(image_shape), shard, slice_, epochs)


def shard_seed(seed: int, index: int) -> int:
    """Shard `index`'s seed (its initial parameters and its steps' draws)."""
    digest = hashlib.sha256(f"scu-jax shard {int(seed)}/{int(index)}".encode()).digest()
    return int.from_bytes(digest[:4], "little") % (2**31 - 1)


def stage_digests(job: Setup, excluded: Sequence[int] = ()) -> list[list[str]]:
    """Every shard's R stage digests, given the erased samples (module docstring)."""
    root = json.dumps(training_fingerprint(job.config), sort_keys=True)
    names = []
    for index in range(job.config.shards.count):
        parent = hashlib.sha256(f"{root}\nshard {index}".encode()).hexdigest()
        chain = []
        for stage in range(1, job.config.shards.slices + 1):
            parent = sharding.chain_digest(parent, sharding.stage_rows(
                job.shard, job.slice_, index, stage, excluded))
            chain.append(parent)
        names.append(chain)
    return names


def _store(workdir: pathlib.Path, digest: str, read_only: bool = False) -> Checkpoints:
    return Checkpoints(workdir / STORE, subdir=digest, read_only=read_only, max_to_keep=1)


def _saved(workdir: pathlib.Path, digest: str, stage: int) -> bool:
    # Orbax renames a step's directory into place once it is complete.
    return (workdir / STORE / digest / str(stage)).is_dir()


@functools.lru_cache(maxsize=8)
def _program(system: System, recipe, epochs: tuple[int, int]):
    return sharding.shards_program(system, recipe, *epochs)


def _template(job: Setup, index: int):
    return jax.device_get(training.initial_state(
        job.system, recipe_of(job.config), shard_seed(job.config.seed, index), job.image_shape))


def build_stages(job: Setup, workdir: pathlib.Path, excluded: Sequence[int] = ()
                 ) -> tuple[list[list[str]], dict[str, Any]]:
    """Trains every stage of every shard whose checkpoint is missing, given the erased samples,
    stage after stage, the shards of a stage as one program (`sharding.shards_program`); each
    from the checkpoint of its previous stage (in memory where this call made it).

    Returns the digests and `{"seconds", "compile_seconds", "shards", "stages", "steps",
    "sample_passes"}` of the work done (seconds: the programs', compilation apart)."""
    digests = stage_digests(job, excluded)
    config = job.config
    program = _program(job.system, recipe_of(config), job.stage_epochs)
    sizes = [int(np.sum(job.shard == k)) for k in range(config.shards.count)]
    width = max(sizes)
    held: dict[int, Any] = {}
    done = {"seconds": 0.0, "compile_seconds": 0.0, "shards": [], "stages": {}, "steps": 0,
            "sample_passes": 0}
    with signals.stops_at_boundaries():  # SIGTERM: this stage saved, then one line (`signals`)
        for stage in range(1, config.shards.slices + 1):
            _build_stage(job, workdir, program, digests, stage, excluded, width, held, done)
            if signals.received() is not None:
                number = signals.received()
                raise Interrupted(number, f"interrupted by {signals.signal_name(number)} after "
                                  f"stage {stage} of {config.shards.slices}: its checkpoints are "
                                  "saved; the same command resumes")
    return digests, done


def _build_stage(job: Setup, workdir: pathlib.Path, program, digests, stage: int, excluded,
                 width: int, held: dict[int, Any], done: dict[str, Any]) -> None:
    """`build_stages`' stage `stage`: its missing checkpoints trained and saved."""
    config, batch = job.config, job.config.train.batch_size
    todo = [k for k in range(config.shards.count)
            if not _saved(workdir, digests[k][stage - 1], stage)]
    if not todo:
        return
    states = []
    for k in todo:
        if k in held:
            states.append(held.pop(k))
        elif stage == 1:
            states.append(_template(job, k))
        else:
            store = _store(workdir, digests[k][stage - 2], read_only=True)
            try:
                states.append(jax.device_get(store.restore(_template(job, k))))
            finally:
                store.close()
    images = np.zeros((len(todo), width, *job.image_shape), job.split.train_images.dtype)
    labels = np.zeros((len(todo), width), np.int32)
    ids = np.zeros((len(todo), width), np.int32)
    counts = np.zeros(len(todo), np.int32)
    for row, k in enumerate(todo):
        rows = sharding.stage_rows(job.shard, job.slice_, k, stage, excluded)
        images[row, :len(rows)] = job.split.train_images[rows]
        labels[row, :len(rows)] = job.split.train_labels[rows]
        ids[row, :len(rows)] = rows
        counts[row] = len(rows)
        steps = (len(rows) // batch) * sum(job.stage_epochs)
        done["steps"] += steps
        done["sample_passes"] += steps * batch
    keys = np.stack([jax.random.fold_in(jax.random.PRNGKey(shard_seed(config.seed, k)), 1)
                     for k in todo])
    stacked = jax.tree.map(lambda *leaves: np.stack(leaves), *states)
    arguments = (stacked, images, labels, ids, counts, keys, np.int32(stage))
    signature = (program, len(todo), width)  # the stage number is an argument, not a constant
    if signature not in _COMPILED:
        begun = time.perf_counter()
        _COMPILED[signature] = program.lower(*arguments).compile()
        done["compile_seconds"] += time.perf_counter() - begun
    compiled = _COMPILED[signature]
    begun = time.perf_counter()
    stacked, finite, losses = jax.block_until_ready(compiled(*arguments))
    done["seconds"] += time.perf_counter() - begun
    finite, losses = np.asarray(finite), np.asarray(losses)
    if not finite.all():
        bad = todo[int(np.argmin(finite))]
        raise NonFiniteError(f"shard {bad}: parameters became non-finite in stage {stage}; "
                             "the checkpoints of earlier stages are kept")
    stacked = jax.device_get(stacked)
    for row, k in enumerate(todo):
        state = jax.tree.map(lambda a, r=row: a[r], stacked)
        store = _store(workdir, digests[k][stage - 1])
        try:
            store.save(stage, state, config, {"kind": "shard", "shard": k, "stage": stage,
                                              "codec_loss": float(losses[row])})
        finally:
            store.close()
        held[k] = state
    done["shards"] = sorted(set(done["shards"]) | set(todo))
    done["stages"][str(stage)] = todo
    logging.info("stage %d of %d: shards %s trained (last codec loss %s)", stage,
                 config.shards.slices, todo, np.round(losses, 3).tolist())


def load_shards(job: Setup, workdir: pathlib.Path, digests: list[list[str]]):
    """The final stage's params and batch_stats of every shard, stacked on a leading axis."""
    states = []
    for k, chain in enumerate(digests):
        store = _store(workdir, chain[-1], read_only=True)
        try:
            states.append(jax.device_get(store.restore(_template(job, k))))
        finally:
            store.close()
    return (jax.tree.map(lambda *a: np.stack(a), *[s.params for s in states]),
            jax.tree.map(lambda *a: np.stack(a), *[s.batch_stats for s in states]))


def original_readers(job: Setup, params, batch_stats, original: str | pathlib.Path | None):
    """`(params, batch_stats)` with the receivers of the sharded system in `original` (the one a
    deletion started from) where the protocol reads every system with the original receiver
    (`evaluation.receiver`, as it reads a single system's unlearning); unchanged otherwise."""
    if original is None or job.config.evaluation.receiver != "original":
        return params, batch_stats
    readers = load_shards(job, pathlib.Path(original), read_manifest(original)["shards"])
    return with_receiver(params, batch_stats, receiver_of(*readers))


def evaluate_sharded(job: Setup, workdir: pathlib.Path, digests, split: ErasureSplit,
                     aggregation: str | None = None, original: str | pathlib.Path | None = None
                     ) -> dict[str, Any]:
    """The aggregated system's metrics on `split` (the evaluation protocol's, `evaluate_system`,
    every shard reading the same draws), with the shards the sender chose and the side bits;
    `original`: the sharded system before a deletion, whose receivers then read x̂
    (`original_readers`)."""
    params, batch_stats = original_readers(job, *load_shards(job, workdir, digests), original)
    aggregation = aggregation or job.config.shards.aggregation
    forward = functools.partial(sharding.sharded_metrics, aggregation=aggregation)
    results = evaluate_system(job.system, params, batch_stats, split, protocol_of(job.config),
                              forward=forward)
    results.update(aggregation=aggregation, shards=job.config.shards.count,
                   slices=job.config.shards.slices,
                   index_bits=sharding.index_bits(job.config.shards.count))
    return results


def read_manifest(workdir: str | pathlib.Path) -> dict[str, Any] | None:
    """The manifest of a sharded workdir, or None."""
    path = pathlib.Path(workdir) / MANIFEST
    return json.loads(path.read_text()) if path.exists() else None


def train_sharded(config: ml_collections.ConfigDict, workdir: str, *,
                  excluded: Sequence[int] = (), overwrite: bool = False) -> dict[str, Any]:
    """Trains (or resumes) the sharded system of `config` in `workdir`, evaluates it and writes
    the manifest and results.json. `excluded`: training rows left out from the start (what a
    deletion of them must reproduce). A workdir of another configuration is refused, or emptied
    with `overwrite`. Returns the results."""
    check_workdir(workdir)
    job = setup(config)
    path = pathlib.Path(workdir)
    manifest = read_manifest(path)
    if (path / CHECKPOINT_DIR).exists():
        if not overwrite:
            raise CheckpointMismatchError(f"{workdir} holds a single system (scu-train without "
                                          "shards); use another --workdir, or --overwrite")
        remove_run_outputs(path, (CHECKPOINT_DIR, RESULTS_FILE, "summaries"))
    if manifest is not None and manifest["training"] != training_fingerprint(config):
        if not overwrite:
            raise CheckpointMismatchError(f"{workdir} holds a sharded system of another "
                                          "configuration; use another --workdir, or --overwrite")
        logging.warning("--overwrite: deleting the sharded system of another configuration in %s",
                        workdir)
        shutil.rmtree(path / STORE, ignore_errors=True)
        (path / MANIFEST).unlink()
        manifest = None
    excluded = sorted({int(i) for i in excluded} | set((manifest or {}).get("excluded", [])))
    digests, done = build_stages(job, path, excluded)
    manifest = {"format": 1, "training": training_fingerprint(config),
                "config": json.loads(config.to_json_best_effort()),
                "count": config.shards.count, "slices": config.shards.slices,
                "stage_epochs": list(job.stage_epochs), "num_train": len(job.split.train_labels),
                "assignment_sha256": ids_digest(job.shard * config.shards.slices + job.slice_),
                "excluded": excluded, "shards": digests,
                "trained_without": (manifest or {}).get("trained_without", excluded),
                **{k: manifest[k] for k in ("requests", "head") if manifest and k in manifest}}
    write_json_atomic(path / MANIFEST, manifest)
    results = evaluate_sharded(job, path, digests, job.split if not excluded else
                               _split_without(job, excluded))
    results.update(train_seconds=done["seconds"], compile_seconds=done["compile_seconds"],
                   steps=done["steps"], sample_passes=done["sample_passes"],
                   stage_epochs=list(job.stage_epochs))
    write_json_atomic(path / RESULTS_FILE, results)
    return results


def _split_without(job: Setup, excluded: Sequence[int]) -> ErasureSplit:
    """The evaluation split once `excluded` is erased: the backdoor protocol's split where they
    are its D_e (read as before: forgetting shows in the backdoor accuracy), else the forget
    split of those rows."""
    if job.split.backdoor:
        return job.split
    return load_split(job.config, ids=np.asarray(excluded, np.int64))

"""Requests on a sharded system (`runs/sharded.py`): exact deletion, its hash-chained record, and
its verification.

Every request's record in the manifest carries the sha256 of the record before it
(`previous_sha256`; the first, of the trained system's manifest entries) and its own (`sha256`),
and the manifest's `head` is the last one's, so an edited, removed or reordered record breaks
the chain. `verify_sharded` checks the chain, that the erased samples are exactly the records'
union, that every shard's checkpoint names follow from the training configuration and those
samples (`runs.sharded.stage_digests`), that each final checkpoint restores to the arrays it
recorded, and that the store holds no checkpoint outside the chains (none that saw an erased
sample).
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import shutil
import time
from typing import Any, Sequence

import numpy as np

from scu_jax.config import config_from_json
from scu_jax.data.forget import class_ids, ids_digest, random_ids, read_ids
from scu_jax.data.sources import num_classes
from scu_jax.errors import LedgerMismatchError
from scu_jax.runs.files import write_json_atomic
from scu_jax.runs.sharded import (MANIFEST, STORE, Setup, build_stages, load_shards,
                                  read_manifest, setup, stage_digests)


def record_digest(record: dict[str, Any]) -> str:
    """sha256 of a record's canonical JSON, its own `sha256` field left out."""
    body = {k: v for k, v in record.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def genesis(manifest: dict[str, Any]) -> str:
    """The chain's first link: sha256 of what the trained system is (its training fingerprint,
    shards, slices and assignment)."""
    body = {k: manifest.get(k) for k in ("training", "count", "slices", "assignment_sha256",
                                         "trained_without")}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def delete_from_sharded(workdir: str, ids: Sequence[int], *, request_id: str = "",
                        job: Setup | None = None) -> dict:
    """Erases training rows `ids` from the sharded system in `workdir` exactly (module
    docstring); returns the request's record (appended to the manifest's `requests`). `job`:
    the system's `setup`, where the caller has it (its data then loads once)."""
    path = pathlib.Path(workdir)
    manifest = read_manifest(path)
    if manifest is None:
        raise FileNotFoundError(f"{workdir} holds no sharded system ({MANIFEST}); train one with "
                                "scu-train --config.shards.count=S")
    job = job or setup(config_from_json(manifest["config"]))
    ids = np.unique(np.asarray(ids, np.int64))
    if len(ids) == 0 or ids.min() < 0 or ids.max() >= len(job.split.train_labels):
        raise ValueError(f"a deletion names training rows in [0, {len(job.split.train_labels)}), "
                         f"got {ids.tolist()[:5]}")
    before = manifest["shards"]
    excluded = sorted(set(manifest["excluded"]) | set(ids.tolist()))
    begun = time.perf_counter()
    digests, done = build_stages(job, path, excluded)
    requests = manifest.get("requests", [])
    record = {"request_id": request_id, "count": int(len(ids)), "ids": ids.tolist(),
              "ids_sha256": ids_digest(ids),
              "shards_retrained": done["shards"], "stages_retrained": done["stages"],
              "earliest_slice": {str(k): int(job.slice_[ids[job.shard[ids] == k]].min()) + 1
                                 for k in np.unique(job.shard[ids]).tolist()},
              "new_checkpoints": sorted({d for chain in digests for d in chain}
                                        - {d for chain in before for d in chain}),
              "seconds": done["seconds"], "compile_seconds": done["compile_seconds"],
              "wall_seconds": time.perf_counter() - begun, "steps": done["steps"],
              "sample_passes": done["sample_passes"],
              "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "previous_sha256": requests[-1]["sha256"] if requests else genesis(manifest)}
    record["sha256"] = record_digest(record)
    manifest.update(excluded=excluded, shards=digests, requests=[*requests, record],
                    head=record["sha256"])
    write_json_atomic(path / MANIFEST, manifest)
    kept = {d for chain in digests for d in chain}
    # What saw an erased sample goes (and what an interrupted call left): no copy of it is kept.
    for stale in [p for p in (path / STORE).iterdir() if p.name not in kept]:
        shutil.rmtree(stale, ignore_errors=True)
    return record


def is_sharded(workdir: str | pathlib.Path | None) -> bool:
    """Whether `workdir` holds a sharded system (its manifest)."""
    return workdir is not None and (pathlib.Path(workdir) / MANIFEST).is_file()


def open_sharded(deployment: str, init_workdir: str | None) -> Setup:
    """The sharded deployment in `deployment`: the sharded system itself (scu-train's workdir),
    or, on the first call, a copy of the one in `init_workdir` (made whole, then renamed)."""
    path = pathlib.Path(deployment)
    if not is_sharded(path):
        if path.exists() and any(path.iterdir()):
            raise ValueError(f"--deployment={deployment} holds something else than a sharded "
                             "system")
        temporary = path.with_name(path.name + ".copying")
        shutil.rmtree(temporary, ignore_errors=True)
        shutil.copytree(init_workdir, temporary)
        if path.exists():
            path.rmdir()
        temporary.rename(path)
    manifest = read_manifest(path)
    return setup(config_from_json(manifest["config"]))


def request_ids(job: Setup, excluded: Sequence[int], *, ids_file: str | None = None,
                class_id: int | None = None, fraction: float | None = None, seed: int = 0
                ) -> np.ndarray:
    """The training rows a request names (a file, a class or a random fraction), checked
    against the training split and the samples erased before (one-line errors)."""
    n = len(job.split.train_labels)
    if ids_file is not None:
        return read_ids(ids_file, n, excluded=excluded)
    if class_id is not None:
        return class_ids(job.split.train_labels, class_id, num_classes(job.config.dataset),
                         excluded=excluded)
    return random_ids(n, fraction, seed, excluded=excluded)


def verify_sharded(workdir: str | pathlib.Path) -> dict[str, Any]:
    """Checks a sharded system's record and store (module docstring); returns a summary.

    Raises:
      LedgerMismatchError: the first thing that does not hold, in one line.
    """
    path = pathlib.Path(workdir)
    manifest = read_manifest(path)
    if manifest is None:
        raise FileNotFoundError(f"{workdir} holds no sharded system ({MANIFEST})")
    previous, erased = genesis(manifest), set(manifest.get("trained_without", []))
    for index, record in enumerate(manifest.get("requests", [])):
        if record.get("previous_sha256") != previous or record.get("sha256") != record_digest(
                record):
            raise LedgerMismatchError(f"{path / MANIFEST}: request {index + 1} "
                                      f"({record.get('request_id')!r}) is not the one the chain "
                                      "recorded (edited, reordered or removed)")
        if ids_digest(record["ids"]) != record["ids_sha256"]:
            raise LedgerMismatchError(f"{path / MANIFEST}: request {index + 1}'s samples do not "
                                      "match their digest")
        previous = record["sha256"]
        erased |= set(record["ids"])
    if manifest.get("requests") and manifest.get("head") != previous:
        raise LedgerMismatchError(f"{path / MANIFEST}: its head is not its last request's: cut")
    if sorted(erased) != manifest["excluded"]:
        raise LedgerMismatchError(f"{path / MANIFEST}: the erased samples are not the requests'")
    job = setup(config_from_json(manifest["config"]))
    if stage_digests(job, manifest["excluded"]) != manifest["shards"]:
        raise LedgerMismatchError(f"{path / MANIFEST}: its checkpoint names are not those of "
                                  "its configuration less the erased samples")
    load_shards(job, path, manifest["shards"])  # each restore checks its arrays' sha256
    kept = {d for chain in manifest["shards"] for d in chain}
    stray = sorted(p.name for p in (path / STORE).iterdir() if p.name not in kept)
    if stray:
        raise LedgerMismatchError(f"{path / STORE}: {len(stray)} checkpoint(s) outside the "
                                  f"chains (first {stray[0][:16]}…), which may have seen an "
                                  "erased sample")
    return {"requests": len(manifest.get("requests", [])), "erased": len(erased),
            "erased_sha256": ids_digest(sorted(erased)), "head": previous,
            "checkpoints": len(kept), "shards": job.config.shards.count}

"""Sequential forget requests against one deployed system, recorded in an append-only ledger.

A deployment directory ``DIR`` holds

* ``ledger.jsonl``: one JSON record per line, the source of truth. The first is the "init"
  record (version 0: a copy of a finished `scu-train` system trained on the clean set); then
  one record per applied request. The current version is the last record's ``version``.
* ``versions/<n>/``: the system after version `n` (`runs/versions.py`), with the request ids it
  applied; versions named by the ledger are never replaced or deleted.
* ``runs/<n>/``: the TensorBoard curves of the run that made version `n` (and a retraining's
  progress, so that an interrupted ``retrain`` resumes).

A request erases ``D_e`` (its sample indices) from the current version with one method; ``D_r``
is every training sample no request has erased. Several requests are applied one after another
(one version each), or coalesced into one run on their union (one version, one record each).

Crash safety: a version is saved under a staging name and renamed into place, then the ledger
is rewritten whole to a temporary file, fsynced and renamed over the old one, so a kill at any
point leaves the previous version current and no half line. Rerunning the command completes the
request: a version on disk that no record names is reused if it was made for this very request
(same ids, method and unlearning config, same parent), otherwise deleted with a warning.

Test hook: the environment variable ``SCU_JAX_FAULT_POINT`` (`FAULT_ENV`) set to ``unlearning``,
``save`` or ``ledger`` (optionally ``:K``, the K-th time the point is reached) makes the process
SIGKILL itself there: right after the method's runner returns (nothing of the run is saved until
the version is, and the erased-data methods persist no state of their own, so this is the same as
a kill during unlearning); once the staging directory is written, before its rename; once the
new ledger is written to its temporary file, before it replaces the old one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pathlib
import shutil
import time
from typing import Any, Iterator, Mapping, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging

from scu_jax.config import METHODS, method_config, validate_config
from scu_jax.data import ids_digest
from scu_jax.errors import CheckpointReadError, ConfigError, LedgerMismatchError
from scu_jax.evaluation import evaluate_system
from scu_jax.models import receiver_of, with_receiver
from scu_jax.runs import chain, versions
from scu_jax.runs.build import build_for, data_parallel, protocol_of
from scu_jax.runs.checkpointing import Checkpoints, model_digest
from scu_jax.runs.deployment import (LEDGER_FILE, Deployment, Request, append, fault_point, now,
                                     open_deployment, pending, read_lines)
from scu_jax.runs.files import write_json_atomic
from scu_jax.runs.saved import load_variables
from scu_jax.runs.unlearn import RETRAIN_PROGRESS_DIR, RUNNERS

RUNS_DIR = "runs"
# What a record keeps of `evaluation.evaluate_system`'s metrics, before and after.
METRICS = tuple(f"{name}_{part}" for part in ("erased", "remain", "test", "heldout")
                for name in ("mse", "accuracy")) + ("erased_to_heldout",)


def _identity(unit: Sequence[Request], parent: int, config: ml_collections.ConfigDict) -> dict:
    """What makes a saved version this unit's own (a rerun after a kill reuses it)."""
    return json.loads(json.dumps({
        "requests": [[r.request_id, ids_digest(r.ids)] for r in unit], "parent_version": parent,
        "method": config.unlearning.method, "unlearning": config.unlearning.to_dict()}))


@contextlib.contextmanager
def _locked(deployment: pathlib.Path) -> Iterator[None]:
    """One writer at a time; the kernel drops the lock of a killed process."""
    deployment.mkdir(parents=True, exist_ok=True)
    with open(deployment / ".lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"another scu-forget is writing --deployment={deployment}") from None
        yield


def _reusable(deployment: pathlib.Path, current: int, identity: dict, head: str | None
              ) -> dict | None:
    """Removes staging directories and versions past `current` no record names; returns the
    metadata of version `current + 1` if it was saved for `identity` after the ledger's present
    last line (`head`), kept for reuse."""
    found = {}

    def keep(version: int) -> bool:
        if version <= current:
            return True  # named by the ledger: never deleted
        if version == current + 1:
            try:
                meta = versions.metadata(deployment, version)
            except ValueError:
                return False
            if meta.get("identity") == identity and (
                    meta.get("records") or [{}])[0].get(chain.FIELD, head) == head:
                found["meta"] = meta
                return True
        return False

    versions.remove_leftovers(deployment, keep)
    return found.get("meta")


def _metrics(system, params, batch_stats, receiver, split, protocol) -> dict[str, float]:
    """`evaluate_system`'s numbers a record keeps, read by the original receiver unless the
    protocol says each system's own."""
    if protocol.receiver == "original":
        params, batch_stats = with_receiver(params, batch_stats, receiver)
    metrics = evaluate_system(system, params, batch_stats, split, protocol)
    return {name: float(metrics[name]) for name in METRICS if name in metrics}


def _initialize(deployment: Deployment, config: ml_collections.ConfigDict) -> None:
    """Version 0: the trained system copied with the deployment's config; the "init" record."""
    source = str(deployment.init_workdir.resolve())
    identity = {"init": source, "data": deployment.data}
    meta = _reusable(deployment.path, -1, identity, deployment.head)
    if meta is None:
        _, system, image_shape = build_for(config, training=True)
        params, batch_stats, _ = load_variables(deployment.init_workdir, system, config,
                                                image_shape)
        record, = chain.link([{
            "record": "init", "version": 0, "source": source, "data": deployment.data,
            "model_sha256": model_digest(params, batch_stats),
            "source_model_sha256": Checkpoints(deployment.init_workdir,
                                               read_only=True).model_digest(),
            "time": now()}], deployment.head)
        versions.save(deployment.path, 0, params, batch_stats, receiver_of(params, batch_stats),
                      config, {"identity": identity, "records": [record], "requests": [],
                               "data": deployment.data},
                      before_rename=lambda: fault_point("save"))
    else:
        logging.info("reusing version 0, saved by an interrupted run")
        record = meta["records"][0]
    _record(deployment, 0, [record])
    deployment.init_workdir = None


def _record(deployment: Deployment, version: int, records: list[dict[str, Any]]) -> None:
    """Appends `version`'s records to the ledger, then marks the version recorded."""
    append(deployment.path, records)
    versions.mark_recorded(deployment.path, version)
    deployment.records.extend(records)
    deployment.head = chain.line_digest(chain.line_of(records[-1]))


def _run_dir(deployment: pathlib.Path, version: int, identity: dict) -> pathlib.Path:
    """Where the run making `version` writes its curves: emptied unless it holds an interrupted
    retraining of this very unit (which then resumes)."""
    run_dir = deployment / RUNS_DIR / str(version)
    marker = run_dir / "request.json"
    same = marker.exists() and json.loads(marker.read_text()) == identity
    if run_dir.exists() and not (same and identity["method"] == "retrain"):
        shutil.rmtree(run_dir)
    write_json_atomic(marker, identity)
    return run_dir


def _apply_unit(deployment: Deployment, config: ml_collections.ConfigDict,
                unit: Sequence[Request], state: dict, parallel) -> list[dict[str, Any]]:
    """Applies one version's request(s) from `state` (the current version, updated in place)."""
    start = time.perf_counter()
    parent = deployment.records[-1]["version"]
    version, method = parent + 1, config.unlearning.method
    identity = _identity(unit, parent, config)
    kinds = {r.kind for r in unit}
    # The class stopping rule needs one class; coalesced classes are one set of samples.
    kind = kinds.pop() if len(kinds) == 1 else "ids"
    if kind == "class" and len({int(deployment.labels[r.ids[0]]) for r in unit}) > 1:
        kind = "ids"
    unit_config = config.copy_and_resolve_references()
    unit_config.forget.kind = kind
    ids, excluded = np.sort(np.concatenate([r.ids for r in unit])), deployment.erased_union()
    split, system, image_shape = build_for(unit_config, ids=ids, excluded=excluded)
    meta = _reusable(deployment.path, parent, identity, deployment.head)
    if meta is not None:
        logging.info("reusing version %d, saved for this request by an interrupted run (not "
                     "recomputed)", version)
        records = meta["records"]
        params, batch_stats, _ = versions.load(deployment.path, version, system, image_shape)
    else:
        protocol = protocol_of(config)
        if state.get("params") is None:
            state["params"], state["batch_stats"], state["receiver"] = versions.load(
                deployment.path, parent, system, image_shape)
        before = _metrics(system, state["params"], state["batch_stats"], state["receiver"], split,
                          protocol)
        params, batch_stats, info = RUNNERS[method](
            unit_config, system, split, state["params"], state["batch_stats"],
            _run_dir(deployment.path, version, identity), image_shape, parallel)
        fault_point("unlearning")
        params, batch_stats = jax.device_get((params, batch_stats))
        after = _metrics(system, params, batch_stats, state["receiver"], split, protocol)
        wall, stamp = time.perf_counter() - start, now()
        names = [r.request_id for r in unit]
        records = [{
            "record": "request", "request_id": r.request_id, "sha256": ids_digest(r.ids),
            "count": int(len(r.ids)), "remain_count": int(len(split.remain_labels)),
            "kind": r.kind, "method": method,
            "stop_rule": info.get("stop_rule"), "stopped_by": info.get("stopped_by"),
            "steps": int(info["steps"]), "epochs": int(info["epochs"]),
            "before": before, "after": after, "unlearn_seconds": info["unlearn_seconds"],
            "compile_seconds": info["compile_seconds"], "wall_seconds": wall,
            "version": version, "parent_version": parent,
            "model_sha256": model_digest(params, batch_stats),
            "coalesced_with": [n for n in names if n != r.request_id], "time": stamp}
            for r in unit]
        records = chain.link(records, deployment.head)
        versions.save(deployment.path, version, params, batch_stats, state["receiver"],
                      unit_config, {"identity": identity, "records": records,
                                    "requests": [{"request_id": r.request_id,
                                                  "sha256": ids_digest(r.ids),
                                                  "ids": r.ids.tolist()} for r in unit],
                                    "data": deployment.data},
                      before_rename=lambda: fault_point("save"))
    _record(deployment, version, records)
    # A finished retraining's progress is a whole training state, of no use once it is a version.
    shutil.rmtree(deployment.path / RUNS_DIR / str(version) / RETRAIN_PROGRESS_DIR,
                  ignore_errors=True)
    deployment.erased.update({r.request_id: r.ids for r in unit})
    if state.get("receiver") is None:
        *_, state["receiver"] = versions.load(deployment.path, version, system, image_shape)
    state["params"], state["batch_stats"] = params, batch_stats
    for record in records:
        logging.info("%s", describe(record))
    return records


def describe(record: dict[str, Any]) -> str:
    """One line of an applied request (what `scu-forget` prints)."""
    before, after = record["before"].get("mse_erased"), record["after"].get("mse_erased")
    return (f"request {record['request_id']}: {record['count']} samples, version "
            f"{record['version']}, {record['method']} stopped by {record['stopped_by']}, "
            f"MSE erased {before:.4f} -> {after:.4f}, {record['wall_seconds']:.2f} s "
            f"(unlearning {record['unlearn_seconds']:.2f} s)")


def apply_to(deployment: Deployment, requests: Sequence[Request], *, method: str = "scu",
             coalesce: bool = False) -> list[dict[str, Any]]:
    """Applies `requests` to an opened deployment (`apply_requests`); returns their records."""
    if method not in METHODS:
        raise ConfigError(f"--method={method!r}: must be one of: {', '.join(METHODS)}")
    with deployment.config.unlocked():
        deployment.config.unlearning.method = method
    config = method_config(deployment.config)
    validate_config(config)
    parallel = data_parallel(config)  # the mesh's errors before any work
    with _locked(deployment.path):
        if read_lines(deployment.path)[1] != deployment.records:
            raise ValueError(f"the ledger of --deployment={deployment.path} changed since it was "
                             "read; rerun the command")
        todo = pending(deployment, requests, method)
        for record in deployment.records:  # a run killed between its record and its mark
            versions.mark_recorded(deployment.path, record["version"])
        for stale in deployment.path.glob(f".{pathlib.Path(LEDGER_FILE).stem}.*.tmp*"):
            logging.warning("removing %s: a ledger an interrupted run did not finish writing",
                            stale)
            stale.unlink()
        if deployment.init_workdir is not None:
            # The deployment's config, not this method's resolved one: a later request with
            # another method must find its own `per_method` entry.
            _initialize(deployment, deployment.config)
        units = [todo] if coalesce else [[r] for r in todo]
        state: dict[str, Any] = {}
        return [record for unit in units
                for record in _apply_unit(deployment, config, unit, state, parallel)]


def apply_requests(deployment: str | os.PathLike, requests: Sequence[tuple[str, Any, str]], *,
                   method: str = "scu", coalesce: bool = False,
                   config_overrides: ml_collections.ConfigDict | Mapping[str, Any] | None = None,
                   init_workdir: str | None = None) -> list[dict[str, Any]]:
    """Applies forget requests to a deployment, one version each (or one for all, `coalesce`).

    Args:
      deployment: the deployment directory (created on the first call).
      requests: `(request_id, training-set indices, kind)` triples, kind one of "ids", "class",
        "random"; all validated before any work.
      method: any of `config.METHODS`.
      coalesce: one unlearning run on the union of the requests (one version, one record each).
      config_overrides: a whole config (its training fields must equal the deployment's) or a
        mapping of dotted fields (`{"unlearning.max_epochs": 3}`) over the deployment's config.
      init_workdir: the finished clean-set `scu-train` workdir; needed on the first call.

    Returns:
      The ledger records appended, in order.
    """
    opened = open_deployment(deployment, init_workdir=init_workdir,
                             config_overrides=config_overrides)
    return apply_to(opened, [Request(*r) for r in requests], method=method, coalesce=coalesce)


def verify(deployment: str | os.PathLike, *, output: str | None = None,
           config_overrides=None) -> dict[str, Any]:
    """Checks a deployment and re-evaluates its current version; the summary as a dict, written
    atomically to `output` if given.

    Checked (`LedgerMismatchError` on the first failure): the ledger's hash chain; each version
    on disk against its records (requests, sample digests, model digest) and no recorded version
    missing from the ledger; every version's arrays against the digest saved with them, and
    their model digest against the ledger's. The summary lists, per version, its request ids,
    the digest of the samples it erased and the digest of its model, and the chain's head: what
    an auditor needs to tie a deletion to a model. The current version is re-evaluated on the
    union of every erased sample (D_r: the rest).
    """
    opened = open_deployment(deployment, config_overrides=config_overrides)
    if not opened.records:
        raise FileNotFoundError(f"--deployment={opened.path} has no ledger")
    current = opened.records[-1]["version"]
    union = opened.erased_union()
    split, system, image_shape = build_for(opened.config, ids=union)
    requests = [r for r in opened.records if r.get("record") == "request"]
    listed = []
    for version in range(current + 1):
        try:
            params, batch_stats, receiver = versions.load(opened.path, version, system,
                                                          image_shape)
        except CheckpointReadError as error:  # the deployment is inconsistent, not the input
            raise LedgerMismatchError(f"version {version}: {error}") from None
        model = model_digest(params, batch_stats)
        named = [r for r in opened.records if r["version"] == version]
        if any(r.get("model_sha256") not in (None, model) for r in named):
            raise LedgerMismatchError(f"version {version}'s arrays are model {model[:16]}…, not "
                                      "the one its ledger record names")
        ids = [opened.erased[r["request_id"]] for r in named if r["record"] == "request"]
        listed.append({"version": version, "requests": [r["request_id"] for r in named
                                                        if r["record"] == "request"],
                       "sha256_erased": ids_digest(np.concatenate(ids)) if ids else None,
                       "model_sha256": model, "time": named[0]["time"]})
    summary = {
        "deployment": str(opened.path), "current_version": current,
        "ledger_head_sha256": opened.head,
        "chained": all(chain.FIELD in r for r in opened.records),
        "requests": [r["request_id"] for r in requests], "count_erased": int(len(union)),
        "sha256_erased": ids_digest(union), "versions": listed,
        "metrics": _metrics(system, params, batch_stats, receiver, split,
                            protocol_of(opened.config)),
        "per_request": [{k: r[k] for k in ("request_id", "version", "count", "sha256", "after")}
                        for r in requests]}
    if output is not None:
        write_json_atomic(output, summary)
    return summary

"""A deployment directory as read: its ledger file, config, applied requests and the requests a
user names (`scu-forget`; the layout and crash safety are in `runs/ledger.py`).

Reading writes nothing: every check here runs before any work. `append` is the ledger's one
writer: the whole new ledger goes to a temporary file beside it, is fsynced and renamed over it.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import pathlib
import signal
from typing import Any, NamedTuple, Sequence

import ml_collections
import numpy as np
from absl import logging

from scu_jax.config import config_from_json, first_difference, training_fingerprint, validate_config
from scu_jax.data import check_ids, class_ids, data_identity, ids_digest, random_ids, read_ids
from scu_jax.errors import CheckpointMismatchError, ConfigError, LedgerMismatchError
from scu_jax.runs import chain, versions
from scu_jax.runs.build import build_for, load_data
from scu_jax.runs.checkpointing import Checkpoints
from scu_jax.runs.files import atomic_path, check_workdir
from scu_jax.runs.saved import load_variables
from scu_jax.runs.worst_case import set_size, worst_case_ids

LEDGER_FILE = "ledger.jsonl"
# The test hook of `fault_point` (`runs/ledger.py`'s docstring).
FAULT_ENV = "SCU_JAX_FAULT_POINT"
FAULT_POINTS = ("unlearning", "save", "ledger")
REQUEST_KINDS = ("ids", "class", "random")
_fault_hits: dict[str, int] = {}



class Request(NamedTuple):
    """One forget request: a name unique in the ledger, training-set indices, and what named
    them ("ids", "class" or "random")."""
    request_id: str
    ids: np.ndarray
    kind: str


@dataclasses.dataclass
class Deployment:
    """A deployment directory as read (nothing written): its config (training fields as
    stored, the rest from the caller's overrides), ledger records and erased samples."""
    path: pathlib.Path
    config: ml_collections.ConfigDict
    records: list[dict[str, Any]]
    erased: dict[str, np.ndarray]  # request id → its sample indices, in ledger order
    labels: np.ndarray
    num_classes: int
    data: dict[str, Any]
    init_workdir: pathlib.Path | None  # set while version 0 is still to be made
    head: str | None = None  # the sha256 of the ledger's last line (`runs/chain.py`)

    @property
    def num_train(self) -> int:
        return len(self.labels)

    def erased_union(self) -> np.ndarray:
        return np.sort(np.concatenate([np.zeros(0, np.int64), *self.erased.values()]))


def fault_point(name: str) -> None:
    """SIGKILLs this process at kill point `name` if `FAULT_ENV` names it (module docstring)."""
    wanted = os.environ.get(FAULT_ENV, "")
    point, _, times = wanted.partition(":")
    if point != name:
        return
    _fault_hits[name] = _fault_hits.get(name, 0) + 1
    if _fault_hits[name] == int(times or 1):
        logging.warning("%s=%s: killing this process", FAULT_ENV, wanted)
        logging.flush()
        os.kill(os.getpid(), signal.SIGKILL)


def read_lines(deployment: pathlib.Path) -> tuple[list[str], list[dict[str, Any]]]:
    """The ledger's lines and records ([], [] if there is none yet), its chain checked
    (`runs/chain.py`); raises `LedgerMismatchError` on a line that is no record or breaks it."""
    path = deployment / LEDGER_FILE
    if not path.exists():
        return [], []
    lines, records = path.read_text().splitlines(), []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except ValueError:
            raise LedgerMismatchError(f"{path}, line {number} is not a JSON record") from None
        if (not isinstance(record, dict) or not isinstance(record.get("version"), int)
                or record.get("record") not in ("init", "request")
                or (number == 1) != (record["record"] == "init")
                or (number == 1 and not isinstance(record.get("source"), str))):
            raise LedgerMismatchError(f"{path}, line {number} is not a ledger record (an init "
                                      "record first, then request records, each with a version)")
        records.append(record)
    chain.check(path, lines, records)
    return lines, records


def read_ledger(deployment: pathlib.Path) -> list[dict[str, Any]]:
    """The ledger's records ([] if there is none yet), checked as `read_lines` checks them."""
    return read_lines(deployment)[1]


def append(deployment: pathlib.Path, records: Sequence[dict[str, Any]]) -> None:
    """Appends `records` by rewriting the whole ledger beside it and renaming it over the old."""
    path = deployment / LEDGER_FILE
    text = path.read_text() if path.exists() else ""
    with atomic_path(path) as tmp:
        tmp.write_text(text + "".join(chain.line_of(r) + "\n" for r in records))
        fault_point("ledger")
    versions.fsync_directory(deployment)


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _trained_meta(init_workdir: pathlib.Path) -> dict[str, Any]:
    """The metadata of the finished clean-set system in `init_workdir` (refusals: one line)."""
    trained = Checkpoints(init_workdir, read_only=True)
    step = trained.latest_step()
    if step is None:
        raise FileNotFoundError(f"--init_workdir={init_workdir} holds no checkpoint; train with "
                                "scu-train --config.forget.kind=ids first")
    meta = trained.saved_config()
    if meta.get("kind") != "train":
        raise ValueError(f"--init_workdir={init_workdir} holds a {meta.get('kind')!r} "
                         "checkpoint, not a trained system")
    if meta.get("training", {}).get("training_set") != "clean":
        raise ValueError(f"--init_workdir={init_workdir} was trained on the backdoor protocol's "
                         "data; forget requests need a system trained on the clean set (scu-train "
                         "--config.forget.kind=ids)")
    train = config_from_json(meta["config"]).train
    if step != train.receiver_epochs + train.epochs:
        raise ValueError(f"training in --init_workdir={init_workdir} is unfinished (epoch {step} "
                         f"of {train.receiver_epochs + train.epochs}); rerun scu-train to finish "
                         "it")
    return meta


def _effective_config(stored: ml_collections.ConfigDict, overrides) -> ml_collections.ConfigDict:
    """`stored` with the caller's config (a whole ConfigDict) or dotted-field overrides (a
    mapping); refused if a field of the trained system's fingerprint changes."""
    if isinstance(overrides, ml_collections.ConfigDict):
        config = overrides.copy_and_resolve_references()
    else:
        config = stored.copy_and_resolve_references()
        for field, value in (overrides or {}).items():
            *parents, leaf = field.split(".")
            node = config
            try:
                for part in parents:
                    node = node[part]
                if leaf not in node:
                    raise KeyError(leaf)
                node[leaf] = value
            except (KeyError, TypeError, ValueError) as error:
                raise ConfigError(f"config.{field}={value!r}: {error}") from None
    config.forget.kind, config.forget.ids_file = "ids", ""  # requests name the samples
    difference = first_difference(training_fingerprint(stored), training_fingerprint(config),
                                  "in the deployment")
    if difference:
        raise ConfigError(f"--config changes the deployed system ({difference}); only the "
                          "unlearning and evaluation fields may change")
    validate_config(config)
    return config


def _erased(deployment: pathlib.Path, records: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Each applied request's indices, read from the versions the ledger names; raises
    `LedgerMismatchError` where a version on disk is not the one the ledger names: other
    requests, other records, another model, or a version the ledger once recorded and no longer
    names (a ledger cut short)."""
    erased: dict[str, np.ndarray] = {}
    previous = None
    for version in sorted({r["version"] for r in records}):
        named = [r for r in records if r["version"] == version]
        if previous is not None and version != previous + 1:
            raise LedgerMismatchError(f"the ledger skips from version {previous} to {version}")
        previous = version
        try:
            meta = versions.metadata(deployment, version)
        except ValueError as error:
            raise LedgerMismatchError(f"the ledger names version {version}, but {error}") from None
        saved = {(r["request_id"], r["sha256"]) for r in meta.get("requests", [])}
        wanted = {(r["request_id"], r["sha256"]) for r in named if r.get("record") == "request"}
        if saved != wanted or any(ids_digest(r["ids"]) != r["sha256"] for r in meta["requests"]):
            raise LedgerMismatchError(
                f"version {version} on disk applied {sorted(saved) or 'no request'} but the ledger "
                f"says {sorted(wanted) or 'no request'}")
        if "records" in meta and meta["records"] != named:
            raise LedgerMismatchError(f"the ledger's record of version {version} is not the one "
                                      "saved with the version: the ledger was edited")
        model = meta.get("digests", {}).get("model")
        if any(r.get("model_sha256") not in (None, model) for r in named):
            raise LedgerMismatchError(f"version {version} on disk holds model {str(model)[:16]}…, "
                                      "not the one its ledger record names: the version was "
                                      "replaced")
        for request in meta["requests"]:
            erased[request["request_id"]] = np.asarray(request["ids"], np.int64)
    last = previous if previous is not None else -1
    cut = [v for v in versions.on_disk(deployment) if v > last and versions.recorded(deployment, v)]
    if cut:
        raise LedgerMismatchError(f"the ledger ends at version {last}, but version {cut[0]} was "
                                  "recorded in it: the ledger was cut short")
    return erased


def open_deployment(deployment: str | os.PathLike, *, init_workdir: str | None = None,
                    config_overrides=None) -> Deployment:
    """Reads a deployment (or, before its first request, the trained system it will copy) and
    checks it; writes nothing. `config_overrides`: a whole config or dotted-field overrides."""
    path = pathlib.Path(deployment).absolute()
    check_workdir(path, "--deployment")
    lines, records = read_lines(path)
    init_path = None if init_workdir is None else pathlib.Path(init_workdir).absolute()
    if records:
        source = pathlib.Path(records[0]["source"])
        if init_path is not None and init_path.resolve() != source:
            raise ValueError(f"--deployment={path} was initialised from {source}, not "
                             f"--init_workdir={init_path}")
        meta, init_path = versions.metadata(path, 0), None
    else:
        if init_path is None:
            raise FileNotFoundError(f"--deployment={path} has no ledger yet: name the trained "
                                    "system with --init_workdir")
        stray = [v for v in versions.on_disk(path) if v != 0]
        if stray:
            raise ValueError(f"--deployment={path} holds versions {stray} but no ledger; restore "
                             f"its {LEDGER_FILE} or choose another --deployment")
        meta = _trained_meta(init_path)
    config = _effective_config(config_from_json(meta["config"]), config_overrides)
    dataset = load_data(config)
    identity = data_identity(dataset)
    if meta.get("data") and meta["data"] != identity:
        raise CheckpointMismatchError(
            f"the deployed system was trained on {meta['data'].get('dataset')} with "
            f"{meta['data'].get('num_train')} samples (sha256 {meta['data']['sha256'][:12]}), but "
            f"the data now reads {identity['num_train']} (sha256 {identity['sha256'][:12]})")
    return Deployment(path, config, records, _erased(path, records), dataset.train_labels,
                      dataset.num_classes, identity, init_path, chain.head_of(lines))


def ids_request(deployment: Deployment, file: str, request_id: str | None = None) -> Request:
    """A request of the indices in `file` (one per line, or a .npy); named by its stem."""
    ids = read_ids(file, deployment.num_train)
    return Request(request_id or pathlib.Path(file).stem, ids, "ids")


def _refuse_applied(deployment: Deployment, request_id: str) -> None:
    """A request id the ledger holds is refused naming its version (before its samples are drawn
    from the ones not yet erased, which would no longer be the same set)."""
    for record in deployment.records:
        if record.get("request_id") == request_id:
            raise ValueError(f"request {request_id!r} was already applied by version "
                             f"{record['version']}")


def class_request(deployment: Deployment, class_id: int, request_id: str | None = None) -> Request:
    """A request of every not yet erased sample of class `class_id`."""
    request_id = request_id or f"class-{class_id}"
    _refuse_applied(deployment, request_id)
    ids = class_ids(deployment.labels, class_id, deployment.num_classes,
                    excluded=deployment.erased_union())
    return Request(request_id, ids, "class")


def random_request(deployment: Deployment, fraction: float, seed: int = 0,
                   request_id: str | None = None) -> Request:
    """A request of a seeded random `fraction` of the training split, not yet erased samples."""
    request_id = request_id or f"random-{fraction:g}-{seed}"
    _refuse_applied(deployment, request_id)
    ids = random_ids(deployment.num_train, fraction, seed, excluded=deployment.erased_union())
    return Request(request_id, ids, "random")


def worst_case_request(deployment: Deployment, size: float, seed: int = 0,
                       request_id: str | None = None, **search) -> Request:
    """A red-team request: the `size` (a count, or a fraction of the training split) not yet
    erased samples whose forgetting is hardest for SCU on the current version
    (`scu_jax.worst_case_set`; `search`: its settings, `runs.worst_case.SEARCH_DEFAULTS`)."""
    request_id = request_id or f"worst-case-{size:g}-{seed}"
    _refuse_applied(deployment, request_id)
    excluded = deployment.erased_union()
    count = set_size(size, deployment.num_train - len(excluded))
    split, system, image_shape = build_for(deployment.config, training=True)
    if deployment.records:
        params, batch_stats, _ = versions.load(deployment.path, deployment.records[-1]["version"],
                                               system, image_shape)
    else:
        params, batch_stats, _ = load_variables(str(deployment.init_workdir), system,
                                                deployment.config, image_shape)
    ids, _, _ = worst_case_ids(deployment.config, system, params, batch_stats, split.train_images,
                               count, seed=seed, excluded=excluded, **search)
    return Request(request_id, ids, "ids")


def pending(deployment: Deployment, requests: Sequence[Request], method: str
             ) -> list[Request]:
    """Validates `requests` against the ledger and each other (one line per refusal) and drops
    the leading ones an interrupted run of the same command applied already."""
    done = [r for r in deployment.records if r.get("record") == "request"]
    by_id = {r["request_id"]: r for r in done}
    by_sha = {r["sha256"]: r for r in done}
    requests = [Request(str(r.request_id), np.asarray(r.ids), r.kind) for r in requests]
    if not requests:
        raise ValueError("no request to apply")
    # A command rerun after a kill between two of its requests: its first ones are the ledger's
    # tail, in order, with the same ids and method.
    for k in range(len(requests) - 1, 0, -1):
        tail = done[-k:] if len(done) >= k else []
        if tail and all(
                (t["request_id"], t["sha256"], t["method"]) == (r.request_id, ids_digest(r.ids),
                                                               method)
                for t, r in zip(tail, requests[:k])):
            logging.info("requests %s were applied by an earlier run of this command; applying "
                         "the rest", ", ".join(r.request_id for r in requests[:k]))
            requests = requests[k:]
            break
    excluded, seen = deployment.erased_union(), set()
    checked = []
    for r in requests:
        if r.kind not in REQUEST_KINDS:
            raise ValueError(f"request {r.request_id!r}: kind {r.kind!r} is not one of: "
                             f"{', '.join(REQUEST_KINDS)}")
        if not r.request_id.strip() or any(c in r.request_id for c in "\n\r\t/"):
            raise ValueError(f"request id {r.request_id!r}: must be a non-empty name without "
                             "slashes or line breaks")
        if r.request_id in by_id:
            raise ValueError(f"request {r.request_id!r} was already applied by version "
                             f"{by_id[r.request_id]['version']}")
        if r.request_id in seen:
            raise ValueError(f"request id {r.request_id!r} is given twice")
        ids = check_ids(r.ids, deployment.num_train, f"request {r.request_id!r}")
        sha = ids_digest(ids)
        if sha in by_sha:
            raise ValueError(f"request {r.request_id!r} names the same samples (sha256 "
                             f"{sha[:12]}) as request {by_sha[sha]['request_id']!r}, applied by "
                             f"version {by_sha[sha]['version']}")
        ids = check_ids(ids, deployment.num_train, f"request {r.request_id!r}", excluded=excluded)
        excluded = np.union1d(excluded, ids)
        seen.add(r.request_id)
        checked.append(Request(r.request_id, ids, r.kind))
    return checked

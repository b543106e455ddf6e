"""`scu-forget`: applies forget requests to a deployed system, one version each, in a ledger.

Usage:
  scu-forget --deployment=DIR --init_workdir=TRAINED [--config=FILE[:VARIANTS] ...]
      (--ids=FILE[,FILE...] | --class_id=N | --random_fraction=F [--random_seed=S]
       | --worst_case=K [--random_seed=S])
      [--request_id=NAME] [--method=scu] [--coalesce]
  scu-forget --deployment=DIR --verify [--output=FILE]

The first call copies the finished clean-set system in --init_workdir (scu-train
--config.forget.kind=ids) to version 0 of DIR; later calls apply requests to the latest version.
--config may change the unlearning and evaluation fields only. A rerun after a kill completes the
request. The ledger is a hash chain and binds each version to the digest of its model: every
call refuses an edited, reordered or cut ledger, or a version replaced (exit 1). --verify checks
every version's arrays too, prints per version its requests, the digest of the samples it erased
and of its model, and the chain's head, and re-evaluates the current version on every erased
sample. --worst_case=K is a red-team request: the K samples (a count, or a fraction of the
training split) not yet erased whose forgetting is hardest for SCU on the current version
(docs/is-it-gone.md, "Worst-case forget sets").

A sharded system (scu-train --config.shards.count=S) is a deployment of its own: requests on it
(--ids, --class_id, --random_fraction; --method=sisa, its default) delete exactly, retraining only
the shards that held a named sample from the stage before its slice (docs/exact-unlearning.md);
its record is DIR/sharded.json, hash-chained, which --verify checks with the store.

Example (alice.txt: training-set indices, one per line):
  scu-forget --deployment=runs/deployed --init_workdir=runs/clean --ids=alice.txt
  scu-forget --deployment=runs/sharded --ids=alice.txt      # exact, on a sharded system
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
from absl import flags
from ml_collections import config_flags

from scu_jax.binaries import common
from scu_jax.config import METHODS
from scu_jax.errors import LedgerMismatchError
from scu_jax.runs import deployment as deployments
from scu_jax.runs import ledger, sharded_requests as sharded
from scu_jax.runs.sharded import MANIFEST, read_manifest

PROGRAM = "scu-forget"
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Optional config file (configs/NAME.py[:reference,smoke]), and "
    "--config.FIELD=VALUE overrides: only the unlearning and evaluation fields may differ from the "
    "deployment's (the fields: docs/config.md).", lock_config=True)
_DEPLOYMENT = flags.DEFINE_string("deployment", None, "The deployment directory: versions and "
                                  "ledger.jsonl.")
_INIT_WORKDIR = flags.DEFINE_string("init_workdir", None, "A finished scu-train workdir trained "
                                    "on the clean set (first call; read only).")
_IDS = flags.DEFINE_list("ids", None, "Request files of training-set indices (one per line, or a "
                         ".npy); each file is one request.")
_CLASS_ID = flags.DEFINE_integer("class_id", None, "A request to erase every sample of this class.")
_RANDOM_FRACTION = flags.DEFINE_float("random_fraction", None, "A request to erase this random "
                                      "fraction of the training split.")
_WORST_CASE = flags.DEFINE_float("worst_case", None, "A request to erase the samples hardest to "
                                 "forget: a count, or a fraction of the training split.")
_RANDOM_SEED = flags.DEFINE_integer("random_seed", 0, "The seed of --random_fraction or "
                                    "--worst_case.")
_REQUEST_ID = flags.DEFINE_string("request_id", None, "The request's name (default: the file stem, "
                                  "class-N or random-F-S).")
_METHOD = flags.DEFINE_enum("method", "scu", (*METHODS, "sisa"), "The unlearning method; "
                            "sisa: exact deletion from a sharded system (the default there).")
_COALESCE = flags.DEFINE_boolean("coalesce", False, "Apply several --ids files as one unlearning "
                                 "run on their union (one version).")
_VERIFY = flags.DEFINE_boolean("verify", False, "Check the ledger's chain and every version "
                               "(records, arrays, model digests), list them, and re-evaluate the "
                               "current version on every erased sample.")
_OUTPUT = flags.DEFINE_string("output", None, "With --verify: also write the JSON to this file.")
flags.mark_flags_as_required(["deployment"])


def _check_flags() -> None:
    """Flag combinations, before anything is read."""
    named = [name for name, holder in (("--ids", _IDS), ("--class_id", _CLASS_ID),
                                       ("--random_fraction", _RANDOM_FRACTION),
                                       ("--worst_case", _WORST_CASE))
             if holder.value is not None]
    if _VERIFY.value:
        if named or _INIT_WORKDIR.value:
            raise ValueError(f"--verify takes no request: drop {(named or ['--init_workdir'])[0]}")
        return
    if _OUTPUT.value:
        raise ValueError("--output goes with --verify")
    if len(named) != 1:
        raise ValueError("name the request with one of --ids, --class_id, --random_fraction, "
                         "--worst_case"
                         + (f" (got {', '.join(named)})" if named else ""))
    if _IDS.value is not None and len(_IDS.value) > 1 and _REQUEST_ID.value:
        raise ValueError("--request_id names one request; several --ids files are named by their "
                         "stems")
    if _COALESCE.value and (_IDS.value is None or len(_IDS.value) < 2):
        raise ValueError("--coalesce joins several --ids files into one run")


def _forget_sharded() -> None:
    """A request on a sharded deployment: exact deletion (`runs/sharded.py`)."""
    if _VERIFY.value:
        summary = sharded.verify_sharded(_DEPLOYMENT.value)
        text = json.dumps(summary, indent=2, sort_keys=True)
        if _OUTPUT.value:
            pathlib.Path(_OUTPUT.value).write_text(text + "\n")
        print(text, flush=True)
        return
    if _WORST_CASE.value is not None or _CONFIG.value is not None:
        raise ValueError("a sharded deployment takes --ids, --class_id or --random_fraction "
                         "(--worst_case and --config are for a single system)")
    if _METHOD.present and _METHOD.value != "sisa":
        raise ValueError(f"--method={_METHOD.value}: a sharded deployment deletes exactly "
                         "(--method=sisa)")
    job = sharded.open_sharded(_DEPLOYMENT.value, _INIT_WORKDIR.value)
    excluded = read_manifest(_DEPLOYMENT.value)["excluded"]
    if _IDS.value is not None:
        named = [(_REQUEST_ID.value or pathlib.Path(path).stem,
                  sharded.request_ids(job, excluded, ids_file=path)) for path in _IDS.value]
    elif _CLASS_ID.value is not None:
        named = [(_REQUEST_ID.value or f"class-{_CLASS_ID.value}",
                  sharded.request_ids(job, excluded, class_id=_CLASS_ID.value))]
    else:
        named = [(_REQUEST_ID.value or f"random-{_RANDOM_FRACTION.value:g}-{_RANDOM_SEED.value}",
                  sharded.request_ids(job, excluded, fraction=_RANDOM_FRACTION.value,
                                      seed=_RANDOM_SEED.value))]
    if _COALESCE.value:  # one deletion: every shard hit retrained once, in one program
        named = [("+".join(name for name, _ in named),
                  np.unique(np.concatenate([ids for _, ids in named])))]
    for name, ids in named:
        record = sharded.delete_from_sharded(_DEPLOYMENT.value, ids, request_id=name, job=job)
        print(f"{name}: {record['count']} samples erased exactly; shards retrained "
              f"{record['shards_retrained']} from slices {record['earliest_slice']}, "
              f"{record['seconds']:.2f} s ({record['compile_seconds']:.1f} s compiling), "
              f"{record['sample_passes']} sample passes", flush=True)
    print(f"record: {pathlib.Path(_DEPLOYMENT.value) / MANIFEST}", flush=True)


def _main() -> None:
    config = common.config_or_fail(PROGRAM, _CONFIG) if _CONFIG.value is not None else None

    def body() -> None:
        _check_flags()
        if sharded.is_sharded(_DEPLOYMENT.value) or sharded.is_sharded(_INIT_WORKDIR.value):
            try:
                _forget_sharded()
            except LedgerMismatchError as error:
                common.fail(PROGRAM, error, code=1)
            return
        if _METHOD.value == "sisa":
            raise ValueError(f"--method=sisa deletes from a sharded system (scu-train "
                             f"--config.shards.count=S); {_DEPLOYMENT.value} is a single system")
        try:
            if _VERIFY.value:
                summary = ledger.verify(_DEPLOYMENT.value, output=_OUTPUT.value,
                                        config_overrides=config)
                print(json.dumps(summary, indent=2, sort_keys=True), flush=True)
                return
            opened = deployments.open_deployment(_DEPLOYMENT.value,
                                                 init_workdir=_INIT_WORKDIR.value,
                                                 config_overrides=config)
            if _IDS.value is not None:
                requests = [deployments.ids_request(opened, path, _REQUEST_ID.value)
                            for path in _IDS.value]
            elif _CLASS_ID.value is not None:
                requests = [deployments.class_request(opened, _CLASS_ID.value, _REQUEST_ID.value)]
            elif _WORST_CASE.value is not None:
                requests = [deployments.worst_case_request(opened, _WORST_CASE.value,
                                                           _RANDOM_SEED.value, _REQUEST_ID.value)]
            else:
                requests = [deployments.random_request(opened, _RANDOM_FRACTION.value,
                                                       _RANDOM_SEED.value, _REQUEST_ID.value)]
            records = ledger.apply_to(opened, requests, method=_METHOD.value,
                                      coalesce=_COALESCE.value)
        except LedgerMismatchError as error:
            common.fail(PROGRAM, error, code=1)
        for record in records:
            print(ledger.describe(record), flush=True)
        print(f"ledger: {opened.path / deployments.LEDGER_FILE}", flush=True)

    common.run_guarded(PROGRAM, body)


run = common.entry(PROGRAM, _main, __doc__)


if __name__ == "__main__":
    run()

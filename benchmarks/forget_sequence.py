"""`python -m benchmarks.forget_sequence`: ten forget requests applied one by one against the same
ten coalesced into one, each deployment's final system compared with retraining on what remains.

  python -m benchmarks.forget_sequence --workdir=runs/forget_sequence \
      --train_root=runs/forgetting --seeds=0,1,2 [--method=scu] [--output=runs/forget_sequence.md]

For each seed it takes the clean-set system `benchmarks.forgetting` trained
(`TRAIN_ROOT/seed<s>/train`, trained here if absent), draws `--requests` random requests of
`--fraction` of the training set each (disjoint, seeded), and applies them through the ledger
(`scu_jax.runs.ledger.apply_requests`, the code `scu-forget` runs) to two deployments: one
version per request, and one version for their union. It retrains on the samples no request
named, and reads the original, both final systems and the retrained one on the union of the
requests under the same protocol, the retrained system as the membership attack's reference.
Wall time is the whole of each deployment's requests (evaluations before and after included);
unlearning time is the methods' own. Rerunning resumes (applied requests are refused, so a
finished deployment is read, not redone).
"""

from __future__ import annotations

import pathlib
import sys
import time
from typing import Any

import numpy as np
from absl import app, flags

from scu_jax.data import random_ids
from scu_jax.runs import ledger, versions
from scu_jax.runs.build import build_for
from scu_jax.runs.deployment import read_ledger
from scu_jax.runs.evaluate import evaluate
from scu_jax.runs.files import write_json_atomic, write_text_atomic
from scu_jax.runs.logs import quiet_library_logs
from scu_jax.runs.train import train_and_evaluate
from scu_jax.runs.unlearn import unlearn_and_evaluate

from benchmarks.forget_common import base_config

_WORKDIR = flags.DEFINE_string("workdir", "runs/forget_sequence", "Where the deployments go.")
_TRAIN_ROOT = flags.DEFINE_string("train_root", "runs/forgetting",
                                  "Where benchmarks.forgetting keeps seed<s>/train.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
_METHOD = flags.DEFINE_string("method", "scu", "The method every request runs.")
_REQUESTS = flags.DEFINE_integer("requests", 10, "How many requests.")
_FRACTION = flags.DEFINE_float("fraction", 0.01, "Each request's share of the training set.")
_OUTPUT = flags.DEFINE_string("output", "runs/forget_sequence.md", "The markdown table.")
_CONFIG_ARGS = flags.DEFINE_list("set", [], "Config overrides FIELD=VALUE (JSON values), as in "
                                 "benchmarks.forgetting (use the same ones: they share systems).")

COLUMNS = (("MSE D_e", "mse_erased", 2), ("acc D_e", "accuracy_erased", 3),
           ("acc test", "accuracy_test", 3), ("MSE test", "mse_test", 2),
           ("MIA AUC (calibrated)", "mia_auc_calibrated", 3))


def requests_for(seed: int, num_train: int, count: int, fraction: float):
    """`count` disjoint random requests of `fraction` each, seeded by the run's seed."""
    chosen, out = np.zeros(0, np.int64), []
    for k in range(count):
        ids = random_ids(num_train, fraction, seed=1000 * seed + k, excluded=chosen)
        out.append((f"user-{k:02d}", ids, "random"))
        chosen = np.union1d(chosen, ids)
    return out, chosen


def _apply(deployment: pathlib.Path, requests, *, coalesce: bool, train_dir, method,
           config) -> float:
    """Applies the requests not yet in the deployment's ledger; returns the wall time of all of
    them (this call's, or the ledger's sum where a previous call applied them)."""
    done = {r["request_id"] for r in read_ledger(deployment) if r.get("record") == "request"} \
        if (deployment / "ledger.jsonl").exists() else set()
    todo = [r for r in requests if r[0] not in done]
    if todo:
        begun = time.perf_counter()
        ledger.apply_requests(deployment, todo, method=method, coalesce=coalesce,
                              init_workdir=str(train_dir), config_overrides=config)
        if not done:
            return time.perf_counter() - begun
    records = [r for r in read_ledger(deployment) if r.get("record") == "request"]
    # Coalesced records share one run: count its wall time once.
    return float(sum({r["version"]: r["wall_seconds"] for r in records}.values()))


def run_seed(seed: int, root: pathlib.Path, method: str) -> list[dict[str, Any]]:
    config = base_config(_CONFIG_ARGS.value)
    config.seed = seed
    train_dir = pathlib.Path(_TRAIN_ROOT.value) / f"seed{seed}" / "train"
    train_and_evaluate(config, str(train_dir))
    where = root / f"seed{seed}"
    where.mkdir(parents=True, exist_ok=True)
    split, system, image_shape = build_for(config, training=True)
    requests, union = requests_for(seed, len(split.train_labels), _REQUESTS.value,
                                   _FRACTION.value)
    # Today's unlearning settings, as benchmarks.forgetting runs them (a deployment otherwise
    # keeps those stored with the trained system).
    walls = {name: _apply(where / name, requests, coalesce=name == "coalesced",
                          train_dir=train_dir, method=method,
                          config=config.copy_and_resolve_references())
             for name in ("one_by_one", "coalesced")}
    union_file = where / "union.txt"
    write_text_atomic(union_file, "".join(f"{i}\n" for i in union))
    config.forget.kind, config.forget.ids_file = "ids", str(union_file)
    config.unlearning.method = "retrain"
    retrain_dir = where / "retrain"
    retrained = unlearn_and_evaluate(config, str(train_dir), str(retrain_dir),
                                     reference_workdir=str(retrain_dir))
    split, system, image_shape = build_for(config)
    rows = [{**retrained, "method": "retrain", "wall_seconds": retrained["unlearn_seconds"]}]
    for name in ("one_by_one", "coalesced", "original"):
        deployment = where / ("one_by_one" if name == "original" else name)
        records = [r for r in read_ledger(deployment) if r.get("record") == "request"]
        version = 0 if name == "original" else records[-1]["version"]
        params, batch_stats, receiver = versions.load(deployment, version, system, image_shape)
        result = evaluate(system, params, batch_stats, split, config, image_shape,
                          reference_workdir=str(retrain_dir), original_receiver=receiver)
        unlearn = sum({r["version"]: r["unlearn_seconds"] for r in records}.values())
        steps = sum({r["version"]: r["steps"] for r in records}.values())
        rows.append({**result, "method": name, "versions": len({r["version"] for r in records}),
                     "wall_seconds": 0.0 if name == "original" else walls[name],
                     "unlearn_seconds": 0.0 if name == "original" else unlearn,
                     "steps": 0 if name == "original" else steps,
                     "stopped_by": ["–"] if name == "original" else sorted(
                         {r["stopped_by"] for r in records})})
    return [{**row, "seed": seed} for row in rows]


def markdown(rows: list[dict[str, Any]]) -> str:
    seeds = sorted({r["seed"] for r in rows})
    retrain = {r["seed"]: r for r in rows if r["method"] == "retrain"}
    header = ["system"]
    for title, key, _ in COLUMNS:
        header += [title, "Δ"] if key != "mia_auc_calibrated" else [title]
    header += ["wall s", "unlearning s", "steps", "stopped by"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in ("original", "one_by_one", "coalesced", "retrain"):
        mine = [r for r in rows if r["method"] == name]
        cells = [name.replace("_", " ")]
        for _, key, digits in COLUMNS:
            values = np.array([r[key] for r in mine], float)
            cells.append(f"{values.mean():.{digits}f} ± {values.std():.{digits}f}")
            if key != "mia_auc_calibrated":
                delta = np.array([r[key] - retrain[r["seed"]][key] for r in mine], float)
                cells.append(f"{delta.mean():+.{digits}f}")
        for key in ("wall_seconds", "unlearn_seconds"):
            values = np.array([r[key] for r in mine], float)
            cells.append(f"{values.mean():.1f} ± {values.std():.1f}")
        cells.append(f"{np.mean([r['steps'] for r in mine]):.0f}")
        stops = sorted({s for r in mine for s in np.atleast_1d(r.get("stopped_by", "-"))})
        cells.append("/".join(map(str, stops)))
        lines.append("| " + " | ".join(cells) + " |")
    sizes = sorted({r["num_erased"] for r in rows})
    return (f"{_REQUESTS.value} requests of {_FRACTION.value:g} each (|union| = "
            f"{', '.join(map(str, sizes))}), method {_METHOD.value}; seeds "
            f"{', '.join(map(str, seeds))}; Δ: minus retraining on what remains, same seed\n\n"
            + "\n".join(lines) + "\n")


def main(argv) -> None:
    del argv
    quiet_library_logs()
    root = pathlib.Path(_WORKDIR.value)
    rows = []
    for seed in map(int, _SEEDS.value):
        rows += run_seed(seed, root, _METHOD.value)
        write_json_atomic(root / "rows.json", rows)
    table = markdown(rows)
    command = "python -m benchmarks.forget_sequence " + " ".join(sys.argv[1:])
    write_text_atomic(_OUTPUT.value, f"<!-- {command} -->\n{table}")
    print(table)


if __name__ == "__main__":
    app.run(main)

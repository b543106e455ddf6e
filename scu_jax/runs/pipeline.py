"""The main job: train → unlearn with every method → evaluate, over seeds, as one comparison table.

`run_pipeline(config, workdir, seeds, methods)` lays out
```
WORKDIR/seed_<s>/train           the original system (scu-train)
WORKDIR/seed_<s>/original.json   its full evaluation (MIA, MI, distance to retrain)
WORKDIR/seed_<s>/<method>        each method's unlearned system and results.json (scu-unlearn)
WORKDIR/comparison.json, .md     mean ± std over seeds, per method, and the protocol
```
Every stage resumes: a finished stage is reused, an interrupted one continues from its checkpoint.
`retrain` runs first so that every other method reports its distance to exact unlearning.
Every row is read by the receiver `config.evaluation.receiver` names (the original system's by
default); a system whose own receiver differs (retraining's, trained on D_r) gets an extra row,
`<method> (own receiver)`, with the accuracies its own receiver reads.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Sequence

import ml_collections
import numpy as np
from absl import logging

from scu_jax.runs.files import check_workdir, write_json_atomic
from scu_jax.evaluation import RECEIVER_METRICS, describe_protocol
from scu_jax.runs.files import RESULTS_FILE
from scu_jax.runs.train import train_and_evaluate
from scu_jax.errors import NonFiniteError
from scu_jax.runs.evaluate import evaluate_workdir
from scu_jax.runs.unlearn import unlearn_and_evaluate
from scu_jax.config import METHODS

COMPARISON_TABLE = "comparison.md"
COLUMNS = (  # (results key, header, scale, decimals)
    ("backdoor_accuracy", "backdoor %", 100, 1),
    ("accuracy_clean", "acc clean %", 100, 1),
    ("accuracy_test", "acc test %", 100, 1),
    ("mse_clean", "MSE clean", 1, 2),
    ("mse_erased", "MSE erased", 1, 2),
    ("psnr_clean", "PSNR clean", 1, 2),
    ("mia_auc", "MIA AUC", 1, 3),
    ("mi_upper_erased", "I(x;z) D_e ≤", 1, 1),
    ("mse_to_retrain", "x̂ SSE to retrain", 1, 2),
    ("unlearn_seconds", "time s", 1, 2),
    ("speedup", "× faster than retrain", 1, 0),
    ("steps", "steps", 1, 0),
)


def _seed_config(config: ml_collections.ConfigDict, seed: int, method: str | None = None):
    seeded = config.copy_and_resolve_references()
    seeded.seed = seed
    if method is not None:
        seeded.unlearning.method = method
    return seeded


def _existing(workdir: pathlib.Path) -> dict[str, Any] | None:
    path = workdir / RESULTS_FILE
    return json.loads(path.read_text()) if path.exists() else None


def run_pipeline(config: ml_collections.ConfigDict, workdir: str, *, seeds: Sequence[int],
                 methods: Sequence[str] = METHODS, overwrite: bool = False) -> dict[str, Any]:
    """Runs (or resumes) the whole comparison; returns and writes the aggregated table.

    With `overwrite`, stages of another configuration found in `workdir` are replaced instead of
    refused (and the original systems' cached evaluations are recomputed).
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; choose from: {', '.join(METHODS)}")
    check_workdir(workdir)
    root = pathlib.Path(workdir)
    ordered = sorted(methods, key=lambda m: m != "retrain")  # retrain first: the reference
    rows: dict[str, list[dict[str, Any]]] = {"original": []}
    root.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        seed_dir = root / f"seed_{seed}"
        train_dir = seed_dir / "train"
        train_and_evaluate(_seed_config(config, seed), str(train_dir), overwrite=overwrite)
        reference = str(seed_dir / "retrain") if "retrain" in methods else None
        for method in ordered:
            out = seed_dir / method
            try:
                result = unlearn_and_evaluate(_seed_config(config, seed, method), str(train_dir),
                                              str(out), reference_workdir=None if method == "retrain"
                                              else reference, overwrite=overwrite)
            except NonFiniteError as error:
                # A diverging baseline is a result of the comparison, not a reason to stop it.
                logging.warning("seed %d: %s", seed, error)
                result = {"status": "non-finite", "error": str(error)}
            result["seed"] = seed
            rows.setdefault(method, []).append(result)
            other = other_receiver_row(result)
            if other is not None:
                rows.setdefault(f"{method} ({other['receiver']} receiver)", []).append(
                    {**other, "seed": seed})
        original_file = seed_dir / "original.json"
        original = (json.loads(original_file.read_text()) if original_file.exists() and not overwrite else
                    evaluate_workdir(str(train_dir), reference_workdir=reference,
                                     output=str(original_file)))
        rows["original"].append({**original, **_existing(train_dir)})
    summary = summarise(rows)
    protocol = describe_protocol(config)
    write_json_atomic(root / "comparison.json", {"protocol": protocol, "methods": summary})
    table = f"Protocol: {protocol}.\n\n" + markdown_table(summary)
    (root / f"{COMPARISON_TABLE}.tmp").write_text(table)
    (root / f"{COMPARISON_TABLE}.tmp").replace(root / COMPARISON_TABLE)
    logging.info("comparison over seeds %s:\n%s", list(seeds), table)
    return summary


def other_receiver_row(result: dict[str, Any]) -> dict[str, Any] | None:
    """The accuracies read by the receiver the table does not use, as a row of their own (None
    where the system's two receivers are the same)."""
    for other in ("own", "original"):
        prefix = f"{other}_receiver_"
        if any(prefix + name in result for name in RECEIVER_METRICS):
            return {"receiver": other, **{name: result[prefix + name] for name in RECEIVER_METRICS
                                          if prefix + name in result}}
    return None


def summarise(rows: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Mean and std over seeds of every column, per method; speed-up against the same seed's
    retraining. A run that diverged (`status: non-finite`) counts in `diverged`, not in the means."""
    retrain_seconds = {r.get("seed"): r["unlearn_seconds"] for r in rows.get("retrain", [])
                       if "unlearn_seconds" in r}
    summary: dict[str, Any] = {}
    for method, all_results in rows.items():
        results = [r for r in all_results if r.get("status") != "non-finite"]
        entry: dict[str, Any] = {"seeds": len(results), "diverged": len(all_results) - len(results)}
        for key, *_ in COLUMNS:
            if key == "speedup":
                values = [retrain_seconds[r.get("seed")] / r["unlearn_seconds"] for r in results
                          if "unlearn_seconds" in r and r.get("seed") in retrain_seconds]
            else:
                values = [r[key] for r in results if key in r and r[key] is not None]
            if values:
                entry[key] = {"mean": float(np.mean(values)), "std": float(np.std(values))}
        summary[method] = entry
    return summary


def markdown_table(summary: dict[str, Any]) -> str:
    """The comparison as a Markdown table of mean ± std."""
    header = "| method | " + " | ".join(title for _, title, *_ in COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 1)]
    for method, entry in summary.items():
        cells = []
        for key, _, scale, decimals in COLUMNS:
            if key not in entry:
                cells.append("–")
                continue
            mean, std = entry[key]["mean"] * scale, entry[key]["std"] * scale
            cells.append(f"{mean:.{decimals}f} ± {std:.{decimals}f}" if entry["seeds"] > 1
                         else f"{mean:.{decimals}f}")
        diverged = entry.get("diverged", 0)
        name = method if not diverged else f"{method} ({diverged} of {diverged + entry['seeds']} diverged)"
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"

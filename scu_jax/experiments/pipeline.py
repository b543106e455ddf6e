"""The main job: train → unlearn with every method → evaluate, over seeds, as one comparison table.

`run_pipeline(config, workdir, seeds, methods)` lays out
```
WORKDIR/seed_<s>/train           the original system (scu-train)
WORKDIR/seed_<s>/original.json   its full evaluation (MIA, MI, distance to retrain)
WORKDIR/seed_<s>/<method>        each method's unlearned system and results.json (scu-unlearn)
WORKDIR/comparison.json, .md     mean ± std over seeds, per method, and the protocol
WORKDIR/probes.json, .png        with `evaluation.probes`: gap closed and verdicts (in comparison.md)
```
Every stage resumes: a finished stage is reused, an interrupted one continues from its checkpoint.
Every seed's system is trained first (the seeds that start from scratch as ONE vmapped program,
`train_and_evaluate_many`); then each method runs on every seed, `retrain` first so
that every other method reports its distance to exact unlearning, and an erased-data method's
runs of all seeds as ONE vmapped program (`unlearn_and_evaluate_many`: each seed's result equals
its run alone; runs that cannot share a program run one by one).
Every row is read by the receiver `config.evaluation.receiver` names (the original system's by
default); a system whose own receiver differs (retraining's, trained on D_r) gets an extra row,
`<method> (own receiver)`, with the accuracies its own receiver reads. The statistics and the
table come from the same code as an experiment's report (`scu_jax.experiments.aggregate`).
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Sequence

import ml_collections
from absl import logging

from scu_jax.config import METHODS
from scu_jax.errors import NonFiniteError
from scu_jax.runs.build import describe_protocol
from scu_jax.experiments.aggregate import (format_statistic, other_receiver_row, statistics,
                                           table_lines, with_speedups)
from scu_jax.experiments.probes import comparison_probes
from scu_jax.runs.files import RESULTS_FILE, check_workdir, write_json_atomic, write_text_atomic
from scu_jax.runs.train import train_and_evaluate_many
from scu_jax.runs.evaluate import evaluate_workdir
from scu_jax.runs.worst_case import resolve_worst_case
from scu_jax.runs.unlearn import unlearn_and_evaluate_many

COMPARISON_TABLE = "comparison.md"
COMPARISON_JSON = "comparison.json"
PROBES_JSON = "probes.json"  # with `evaluation.probes`: gap closed and verdicts (experiments.probes)
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
# The columns of a forget set without a backdoor (`forget.kind` ids, class, random).
FORGET_COLUMNS = (
    ("accuracy_erased", "acc D_e %", 100, 1),
    ("mse_erased", "MSE D_e", 1, 2),
    ("mse_heldout", "MSE held-out", 1, 2),
    ("accuracy_remain", "acc D_r %", 100, 1),
    ("accuracy_test", "acc test %", 100, 1),
    ("mse_test", "MSE test", 1, 2),
    ("mia_auc_calibrated", "MIA AUC (calibrated)", 1, 3),
    ("mia_auc", "MIA AUC (loss)", 1, 3),
    ("mse_to_retrain", "x̂ SSE to retrain", 1, 2),
    ("unlearn_seconds", "time s", 1, 2),
    ("speedup", "× faster than retrain", 1, 0),
    ("steps", "steps", 1, 0),
)


def columns_for(config: ml_collections.ConfigDict):
    """The table's columns: the backdoor protocol's (with the backdoor on every triggered image
    where the methods know only part of D_e), or a forget set's."""
    if config.forget.kind != "backdoor":
        return FORGET_COLUMNS
    if config.forget.known_fraction < 1:
        return (("backdoor_accuracy_all", "backdoor, every triggered image %", 100, 1),
                *COLUMNS)
    return COLUMNS


def _seed_config(config: ml_collections.ConfigDict, seed: int, method: str | None = None):
    seeded = config.copy_and_resolve_references()
    seeded.seed = seed
    if method is not None:
        seeded.unlearning.method = method
    return seeded


def _existing(workdir: pathlib.Path) -> dict[str, Any] | None:
    path = workdir / RESULTS_FILE
    return json.loads(path.read_text()) if path.exists() else None


def _run_method(config: ml_collections.ConfigDict, root: pathlib.Path, seeds: Sequence[int],
                method: str, reference: bool, overwrite: bool,
                rows: dict[str, list[dict[str, Any]]]) -> None:
    """Runs one method on every seed's trained system (the erased-data methods of all seeds in
    one vmapped program, `unlearn_and_evaluate_many`); adds a row per seed (and per other
    receiver) to `rows`."""
    outcomes = unlearn_and_evaluate_many(
        [_seed_config(config, seed, method) for seed in seeds],
        [str(root / f"seed_{seed}" / "train") for seed in seeds],
        [str(root / f"seed_{seed}" / method) for seed in seeds],
        reference_workdirs=[str(root / f"seed_{seed}" / "retrain") if reference else None
                            for seed in seeds], overwrite=overwrite)
    for seed, result in zip(seeds, outcomes):
        if isinstance(result, NonFiniteError):
            # A diverging baseline is a result of the comparison, not a reason to stop it.
            logging.warning("seed %d: %s", seed, result)
            result = {"status": "non-finite", "error": str(result)}
        result["seed"] = seed
        rows.setdefault(method, []).append(result)
        other = other_receiver_row(result)
        if other is not None:
            rows.setdefault(f"{method} ({other['receiver']} receiver)", []).append(
                {**other, "seed": seed})


def _original_row(config: ml_collections.ConfigDict, root: pathlib.Path, seed: int,
                  reference: str | None, overwrite: bool) -> dict[str, Any]:
    """The trained system's row: its evaluation (cached in original.json) and its times."""
    seed_dir = root / f"seed_{seed}"
    train_dir = seed_dir / "train"
    original_file = seed_dir / "original.json"
    if original_file.exists() and not overwrite:
        original = json.loads(original_file.read_text())
    else:
        seed_config = resolve_worst_case(_seed_config(config, seed), train_dir)  # the methods' set
        original = evaluate_workdir(str(train_dir), reference_workdir=reference,
                                    output=str(original_file), config=seed_config)
    # The training run's results add its times; the numbers are the evaluation's (on a forget
    # set, the training run read no D_e).
    return {**_existing(train_dir), **original}


def run_pipeline(config: ml_collections.ConfigDict, workdir: str, *, seeds: Sequence[int],
                 methods: Sequence[str] = METHODS, overwrite: bool = False) -> dict[str, Any]:
    """Runs (or resumes) the whole comparison; returns and writes the aggregated table.

    With `overwrite`, stages of another configuration found in `workdir` are replaced instead of
    refused (and the original systems' cached evaluations are recomputed).
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; choose from: "
                         f"{', '.join(METHODS)}")
    check_workdir(workdir)
    root = pathlib.Path(workdir)
    rows: dict[str, list[dict[str, Any]]] = {"original": []}
    root.mkdir(parents=True, exist_ok=True)
    train_and_evaluate_many([_seed_config(config, seed) for seed in seeds],
                            [str(root / f"seed_{seed}" / "train") for seed in seeds],
                            overwrite=overwrite)
    reference = "retrain" in methods
    for method in sorted(methods, key=lambda m: m != "retrain"):  # retrain first: the reference
        _run_method(config, root, seeds, method, reference and method != "retrain", overwrite,
                    rows)
    for seed in seeds:
        rows["original"].append(_original_row(
            config, root, seed, str(root / f"seed_{seed}" / "retrain") if reference else None,
            overwrite))
    columns = columns_for(config)
    summary = summarise(rows, columns)
    protocol = describe_protocol(config)
    write_json_atomic(root / COMPARISON_JSON, {"protocol": protocol, "methods": summary})
    table = f"Protocol: {protocol}.\n\n" + markdown_table(summary, columns)
    probes, probe_section = comparison_probes(rows, root)
    if probes is not None:
        write_json_atomic(root / PROBES_JSON, probes)
        table += "\n" + "\n".join(probe_section)
    write_text_atomic(root / COMPARISON_TABLE, table)
    logging.info("comparison over seeds %s:\n%s", list(seeds), table)
    return summary


def summarise(rows: dict[str, list[dict[str, Any]]], columns=COLUMNS) -> dict[str, Any]:
    """Mean and std over seeds of every column, per method (row label); speed-up against the same
    seed's retraining (retraining's own is 1). A run that diverged (`status: non-finite`) counts
    in `diverged`, not in the means. Seeds that ran as one program (`runs_together`) say so: each
    one's time is the program's."""
    labelled = [{**row, "method": label} for label, results in rows.items() for row in results]
    timed = with_speedups(labelled, pair_by="seed", reference_too=True)
    summary: dict[str, Any] = {}
    for label in rows:
        mine = [row for row in timed if row["method"] == label]
        entry = statistics(mine, [key for key, *_ in columns])
        summary[label] = {key: ({"mean": value[0], "std": value[1]} if isinstance(value, tuple)
                                else value) for key, value in entry.items()}
        together = max((row.get("runs_together") or 1 for row in mine), default=1)
        if together > 1:
            summary[label]["runs_together"] = together
    return summary


def markdown_table(summary: dict[str, Any], columns=COLUMNS) -> str:
    """The comparison as a Markdown table of mean ± std (the mean alone for one seed)."""
    lines = []
    for method, entry in summary.items():
        diverged = entry.get("diverged", 0)
        name = method if not diverged else (
            f"{method} ({diverged} of {diverged + entry['seeds']} diverged)")
        if entry.get("runs_together", 1) > 1:  # times are the whole program's
            name += f" ({entry['runs_together']} seeds as one program, its time)"
        lines.append([name] + [format_statistic((entry[key]["mean"], entry[key]["std"], 0)
                                                if key in entry else None,
                                                scale, decimals, spread=entry["seeds"] > 1)
                               for key, _, scale, decimals in columns])
    return "\n".join(table_lines(["method", *(title for _, title, *_ in columns)], lines)) + "\n"

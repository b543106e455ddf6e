"""`python -m benchmarks.end_to_end`: end-to-end unlearning wall time of every method against
retraining, at EDR 2–10 % on the embedded MNIST, as speed-ups.

  python -m benchmarks.end_to_end --workdir=runs/bench_e2e [--seeds=0] [--json=runs/end_to_end.json]

It runs the EDR sweep (`configs/experiments/edr_sweep.py`: the main job's system, trained 150 +
300 epochs, at each EDR) in one process, one task at a time, so no two timings share the machine;
MI estimation is skipped (it is evaluation, not unlearning). Each method's time is its unlearning
wall time with compilation timed apart, retraining's the full recipe on D_r; both come from the
same run on the same machine. Rerunning resumes (finished cells are reused).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np
from absl import app, flags

from scu_jax.experiments.aggregate import with_speedups
from scu_jax.experiments.scheduler import run_experiment
from scu_jax.experiments.sweeps import experiment_config
from scu_jax.runs.files import write_text_atomic
from scu_jax.runs.logs import quiet_library_logs

_WORKDIR = flags.DEFINE_string("workdir", "runs/bench_e2e", "The sweep's experiment directory.")
_JSON = flags.DEFINE_string("json", "runs/end_to_end.json", "Where the JSON summary goes.")
_SEEDS = flags.DEFINE_list("seeds", ["0"], "Seeds (each trains its own systems).")
_EDRS = flags.DEFINE_list("edrs", ["0.02", "0.04", "0.06", "0.08", "0.10"], "Erased data ratios.")


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """{method: {edr: {seconds, retrain_seconds, speedup, backdoor, accuracy_clean}}}, seed means."""
    table: dict[str, dict[str, list[dict[str, float]]]] = {}
    retrain = {row["group"]: row["unlearn_seconds"] for row in rows if row["method"] == "retrain"}
    for row in with_speedups(rows):
        if row["method"] == "original" or row.get("status") != "ok":
            continue
        table.setdefault(row["method"], {}).setdefault(f"{row['edr']:.2f}", []).append({
            "seconds": row["unlearn_seconds"], "retrain_seconds": retrain.get(row["group"]),
            "speedup": row.get("speedup", 1.0), "steps": row.get("steps"),
            "backdoor": row["backdoor_accuracy"], "accuracy_clean": row["accuracy_clean"]})
    return {method: {edr: {key: float(np.mean([e[key] for e in entries]))
                           for key in entries[0] if entries[0][key] is not None}
                     for edr, entries in sorted(by_edr.items())}
            for method, by_edr in table.items()}


def markdown(summary: dict[str, dict[str, dict[str, float]]]) -> str:
    edrs = sorted({edr for by_edr in summary.values() for edr in by_edr})
    lines = ["| method | " + " | ".join(f"EDR {float(e) * 100:.0f} %" for e in edrs) + " |",
             "|---|" + "---|" * len(edrs)]
    for method, by_edr in summary.items():
        cells = []
        for edr in edrs:
            entry = by_edr.get(edr)
            if entry is None:
                cells.append("–")
            elif method == "retrain":
                cells.append(f"{entry['seconds']:.1f} s (backdoor {100 * entry['backdoor']:.1f} %, "
                             f"D_clean acc {100 * entry['accuracy_clean']:.1f} %)")
            else:
                cells.append(f"{entry['seconds']:.2f} s, **{entry['speedup']:.0f}×** "
                             f"(backdoor {100 * entry['backdoor']:.1f} %, D_clean acc "
                             f"{100 * entry['accuracy_clean']:.1f} %)")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        sys.exit(f"benchmarks.end_to_end: error: unexpected arguments: {' '.join(argv[1:])}")
    try:
        seeds = tuple(int(seed) for seed in _SEEDS.value)
        edrs = tuple(float(edr) for edr in _EDRS.value)
    except ValueError:
        sys.exit("benchmarks.end_to_end: error: --seeds must be integers and --edrs numbers")
    quiet_library_logs()
    config = experiment_config("edr_sweep")
    config.grid.seeds, config.grid.edr = seeds, edrs
    config.bases.mnist5k.evaluation.mi_steps = 0
    try:
        report = run_experiment(config, _WORKDIR.value, workers=1)
    except (ValueError, FileExistsError) as error:
        sys.exit(f"benchmarks.end_to_end: error: {' '.join(str(error).split())}")
    summary = summarise(report.rows)
    write_text_atomic(_JSON.value, json.dumps({"seeds": seeds, "edrs": edrs, "summary": summary,
                                               "sweep_seconds": report.seconds}, indent=2) + "\n")
    print(markdown(summary), end="")


if __name__ == "__main__":
    app.run(main)

"""Corrective unlearning: each method, and each robust variant of SCU, given part of D_e.

```
python -m benchmarks.corrective --corrective_workdir=runs/robust --corrective_seeds=0,1,2 \
    [--known_fractions=0.1,0.25,0.5,1.0] \
    [--corrective_variants=retrain,finetune,scu,scu_e40,scu_e80,scu_sam0.01,salun]
```
Per seed, the main job's system (`configs/mnist.py`, in `WORKDIR/seed_S/train`: the one
`benchmarks.robust` trains, reused, or trained here) and, at each known fraction f, every variant
(`benchmarks.variants`: a method, or SCU run past its stop `scu_eE`, or sharpness-aware
`scu_samR`) given a seeded share f of D_e (`forget.known_fraction`, drawn with the seed) while the
other triggered images stay in D_r, unknown; retraining drops only the known part too. At f = 1
the runs are `benchmarks.robust`'s own (`WORKDIR/seed_S/NAME`, reused). Writes
`WORKDIR/corrective.json` (one row per run) and `WORKDIR/corrective.md`: the backdoor on every
triggered image against f per variant, the smallest f that brings it under 20 % (mean over the
seeds), and the D_clean and test accuracies and speed-ups at each f; and the figures
`WORKDIR/figures_corrective/known_fraction_*.png` (`scu-report`'s, one line per variant).
"""

from __future__ import annotations

import pathlib
import sys
from typing import Any

from absl import app, flags

from benchmarks.variants import apply_variant, variant_fields

_WORKDIR = flags.DEFINE_string("corrective_workdir", "runs/robust",
                               "Where the systems (benchmarks.robust's, reused) and tables go.")
_SEEDS = flags.DEFINE_list("corrective_seeds", ["0"], "Seeds (each its own trained system).")
_FRACTIONS = flags.DEFINE_list("known_fractions", ["0.1", "0.25", "0.5", "1.0"],
                               "Shares of D_e the methods are given.")
_VARIANTS = flags.DEFINE_list(
    "corrective_variants", ["retrain", "finetune", "scu", "scu_e40", "scu_e80", "scu_sam0.01",
                            "salun"], "Methods and variants (benchmarks.variants).")
READS = ("backdoor_accuracy", "backdoor_accuracy_all", "backdoor_accuracy_unknown",
         "accuracy_clean", "accuracy_test", "unlearn_seconds")
# The grid fields of the main job's one setting, so that the sweeps' summary, table and figures
# read these rows as they read a known-fraction sweep's.
SETTING = {"dataset": "mnist5k", "channel": "awgn", "family": "paper", "snr_db": 5.0,
           "edr": 0.06, "beta_u": None}


def run_seed(root: pathlib.Path, seed: int, names: list[str],
             fractions: list[float]) -> list[dict[str, Any]]:
    from scu_jax.config import default_config
    from scu_jax.runs import train, unlearn

    config = default_config()
    config.seed, config.evaluation.mi_steps = seed, 0
    trained = root / f"seed_{seed}" / "train"
    train.train_and_evaluate(config, str(trained))
    rows = []
    for fraction in fractions:
        for name in names:
            run_config = apply_variant(config, name)
            run_config.forget.known_fraction = fraction
            where = root / f"seed_{seed}" / (name if fraction == 1.0 else f"known{fraction:g}")
            workdir = where if fraction == 1.0 else where / name
            results = unlearn.unlearn_and_evaluate(run_config, str(trained), str(workdir))
            rows.append({**SETTING, "seed": seed, "group": seed, "known_fraction": fraction,
                         "method": name, "status": "ok", **{k: results[k] for k in READS
                                                            if k in results}})
            print(f"seed {seed}, {100 * fraction:g} % known, {name}: every triggered image "
                  f"{100 * results['backdoor_accuracy_all']:.1f} %, test accuracy "
                  f"{100 * results['accuracy_test']:.1f} %", file=sys.stderr, flush=True)
    return rows


def tables(rows: list[dict[str, Any]], names: list[str]) -> str:
    """The smallest-f table (`experiments.report.known_fraction_lines`) and, per f, the
    accuracies and speed-ups (mean ± std over the seeds)."""
    from scu_jax.experiments.aggregate import aggregate, format_statistic, table_lines, with_speedups
    from scu_jax.experiments.report import known_fraction_lines

    timed = with_speedups(rows)
    summary = aggregate(timed)
    out = known_fraction_lines(_in_order(summary, names))
    fractions = sorted({row["known_fraction"] for row in rows})
    for metric, label, scale, digits in (
            ("backdoor_accuracy_unknown", "backdoor on the triggered images not known (%)", 100, 1),
            ("accuracy_clean", "D_clean accuracy (%)", 100, 1),
            ("accuracy_test", "test accuracy (%)", 100, 1),
            ("speedup", "× faster than retraining at the same f", 1, 0)):
        body = []
        for name in names:
            cells = [format_statistic(summary.get((*SETTING.values(), f, name), {}).get(metric),
                                      scale, digits) for f in fractions]
            body.append([name, *cells])
        out += [f"\n{label}:\n", *table_lines(["system", *(f"{100 * f:g} % known"
                                                          for f in fractions)], body)]
    return "\n".join(out) + "\n"


def _in_order(summary, names: list[str]):
    return dict(sorted(summary.items(), key=lambda item: (names.index(item[0][-1]), item[0][6])))


def main(argv) -> None:
    del argv
    from scu_jax.experiments.aggregate import aggregate, with_speedups
    from scu_jax.experiments.figures import axis_figures
    from scu_jax.runs.files import write_json_atomic, write_text_atomic
    from scu_jax.runs.logs import quiet_library_logs

    names = list(_VARIANTS.value)
    try:
        fractions = [float(f) for f in _FRACTIONS.value]
        for name in names:
            variant_fields(name)
    except ValueError as error:
        sys.exit(f"benchmarks.corrective: error: {error}")
    if not fractions or not all(0 < f <= 1 for f in fractions):
        sys.exit("benchmarks.corrective: error: --known_fractions must lie in (0, 1]")
    quiet_library_logs()
    root = pathlib.Path(_WORKDIR.value)
    rows: list[dict[str, Any]] = []
    for seed in (int(s) for s in _SEEDS.value):
        rows += run_seed(root, seed, names, fractions)
        write_json_atomic(root / "corrective.json", rows)
    text = tables(rows, names)
    write_text_atomic(root / "corrective.md", text)
    print(text)
    figures = root / "figures_corrective"
    figures.mkdir(parents=True, exist_ok=True)
    for name in axis_figures(_in_order(aggregate(with_speedups(rows)), names), figures):
        if name.endswith(".png"):
            print(f"figure: {figures / name}")


if __name__ == "__main__":
    app.run(main)

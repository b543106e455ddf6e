"""How deep does each method forget? The relearning attack, run long, on the main job's systems.

```
python -m benchmarks.robust --robust_workdir=runs/robust --robust_seeds=0,1,2 \
    [--deep_epochs=40,60,80] [--sam_radii=0.01,0.02] [--robust_fractions=0.1,0.25] \
    [--robust_steps=0,25,50,100,200,500,1000] [--robust_extra=salun,salun_sam0.01]
```
Per seed, in `WORKDIR/seed_S/`: the main job's system (`configs/mnist.py`, trained once and
reused), retraining, fine-tuning, SCU as shipped (it stops once D_e's backdoor is below 10 %),
SCU run on past that stop for a fixed number of epochs (`scu_eE`: `early_stop=False`,
`max_epochs=E`), and sharpness-aware SCU (`scu_samR`: `sam_radius=R`, the shipped stop), and any `--robust_extra` variant
(`benchmarks.variants`, e.g. SalUn and its sharpness-aware step); then
`runs/relearn.relearning_curve` on each (the codec's training step on a seeded fraction of D_e,
the backdoor read on the rest). Every finished run, and every curve already in
`WORKDIR/robust.json` for the same steps and fractions, is reused. Writes `WORKDIR/robust.json` and
`WORKDIR/robust.md`: per variant, mean ± std over the seeds of the backdoor, D_clean and test
accuracy, the unlearning time and its speed-up over the same seed's retraining, and per attack
fraction each seed's first attack step count with the backdoor back above 50 %; and the curves'
figures, `WORKDIR/figures_<fraction>/relearning.png`.
"""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Any

import numpy as np
from absl import app, flags

from benchmarks.variants import variant_fields

# Names of their own: the benchmarks' modules share absl's flags when imported together.
_WORKDIR = flags.DEFINE_string("robust_workdir", "runs/robust", "Where the systems and tables go.")
_SEEDS = flags.DEFINE_list("robust_seeds", ["0"], "Seeds (each its own trained system).")
_DEEP = flags.DEFINE_list("deep_epochs", ["40", "60", "80"], "SCU's fixed epochs past the stop.")
_RADII = flags.DEFINE_list("sam_radii", ["0.01", "0.02"], "Sharpness-aware SCU's radii.")
_FRACTIONS = flags.DEFINE_list("robust_fractions", ["0.1", "0.25"], "Parts of D_e attacked with.")
_STEPS = flags.DEFINE_list("robust_steps", ["0", "25", "50", "100", "200", "500", "1000"],
                           "Attack steps to read after.")
_EXTRA = flags.DEFINE_list("robust_extra", [], "More variants (benchmarks.variants).")
READS = ("backdoor_accuracy", "accuracy_clean", "accuracy_test", "mse_clean")


def variants(deep: list[int], radii: list[float], extra=()) -> dict[str, dict[str, Any]]:
    """name → the unlearning fields of its run (`method` included; `benchmarks.variants`)."""
    names = ["retrain", "finetune", "scu", *(f"scu_e{e}" for e in deep),
             *(f"scu_sam{r:g}" for r in radii), *extra]
    return {name: variant_fields(name) for name in names}


def run_seed(root: pathlib.Path, seed: int, runs: dict[str, dict[str, Any]],
             fractions: list[float], steps: list[int], done=None) -> dict[str, Any]:
    """Every run of one seed and its attack curves; `done`: this seed's entries from an earlier
    robust.json of the same steps and fractions, reused."""
    from scu_jax.config import default_config
    from scu_jax.runs import train, unlearn
    from scu_jax.runs.relearn import relearning_curve

    config = default_config()
    config.seed, config.evaluation.mi_steps = seed, 0
    trained = root / f"seed_{seed}" / "train"
    train.train_and_evaluate(config, str(trained))
    out: dict[str, Any] = {}
    for name, fields in {"original": None, **runs}.items():
        if name in (done or {}):
            out[name] = done[name]
            continue
        run_config = config.copy_and_resolve_references()
        workdir = trained
        if fields is not None:
            for field, value in fields.items():
                run_config.unlearning[field] = value
            workdir = root / f"seed_{seed}" / name
            results = unlearn.unlearn_and_evaluate(run_config, str(trained), str(workdir))
        else:
            results = json.loads((trained / "results.json").read_text())
        curves = {str(f): [entry["backdoor_accuracy"] for entry in relearning_curve(
            run_config, workdir, fraction=f, steps=steps)] for f in fractions}
        out[name] = {**{k: results[k] for k in READS}, "steps": results.get("steps"),
                     "seconds": results.get("unlearn_seconds"), "attack": curves}
        print(f"seed {seed} {name}: " + ", ".join(
            f"{f}: {[round(100 * v, 1) for v in c]}" for f, c in curves.items()),
            file=sys.stderr, flush=True)
    return out


def _back(curve: list[float], steps: list[int]) -> str:
    return next((str(s) for s, v in zip(steps, curve) if v > 0.5), "–")


def table(results: dict[str, Any], steps: list[int], fractions: list[float]) -> str:
    seeds = sorted(results)
    names = list(results[seeds[0]])
    head = ("| system | backdoor % | D_clean acc % | test acc % | unlearning s | × faster than "
            "retrain | " + " | ".join(f"back > 50 % after ({100 * f:g} % of D_e)"
                                     for f in fractions) + " |")
    lines = [head, "|" + "---|" * (6 + len(fractions))]

    def stat(values, scale=1.0, digits=1):
        values = np.asarray([v for v in values if v is not None], float) * scale
        return "–" if not len(values) else f"{values.mean():.{digits}f} ± {values.std():.{digits}f}"

    for name in names:
        rows = [results[s][name] for s in seeds]
        speed = [results[s]["retrain"]["seconds"] / r["seconds"] if r["seconds"] else None
                 for s, r in zip(seeds, rows)] if name not in ("original", "retrain") else []
        attacks = [", ".join(_back(r["attack"][str(f)], steps) for r in rows) for f in fractions]
        lines.append(f"| {name} | {stat([r['backdoor_accuracy'] for r in rows], 100)} | "
                     f"{stat([r['accuracy_clean'] for r in rows], 100)} | "
                     f"{stat([r['accuracy_test'] for r in rows], 100)} | "
                     f"{stat([r['seconds'] for r in rows], digits=2)} | "
                     f"{stat(speed, digits=0) if speed else '–'} | " + " | ".join(attacks) + " |")
    return "\n".join(lines) + "\n"


def figures(results: dict[Any, Any], steps: list[int], fractions: list[float],
            root: pathlib.Path) -> list[pathlib.Path]:
    """One relearning figure per attack fraction (`experiments.figures.relearning_figure`: a line
    per system, mean ± std over the seeds), in `root/figures_<fraction>/relearning.png`."""
    from scu_jax.experiments.figures import relearning_figure

    seeds = sorted(results)
    made = []
    for fraction in fractions:
        by_method = {}
        for name in results[seeds[0]]:
            curves = np.array([results[s][name]["attack"][str(fraction)] for s in seeds])
            by_method[name] = {"mean": curves.mean(0).tolist(), "std": curves.std(0).tolist(),
                               "steps": steps, "fraction": fraction, "seeds": seeds}
        directory = root / f"figures_{fraction:g}"
        directory.mkdir(parents=True, exist_ok=True)
        relearning_figure({("mnist5k", "awgn", "paper", 5.0, 0.06): by_method}, directory)
        made.append(directory / "relearning.png")
    return made


def main(argv) -> None:
    del argv
    from scu_jax.runs.files import write_json_atomic, write_text_atomic

    root = pathlib.Path(_WORKDIR.value)
    steps = [int(s) for s in _STEPS.value]
    fractions = [float(f) for f in _FRACTIONS.value]
    try:
        runs = variants([int(e) for e in _DEEP.value], [float(r) for r in _RADII.value],
                        _EXTRA.value)
    except ValueError as error:
        sys.exit(f"benchmarks.robust: error: {error}")
    earlier = {}
    if (root / "robust.json").exists():
        saved = json.loads((root / "robust.json").read_text())
        if (saved["steps"], saved["fractions"]) == (steps, fractions):
            earlier = saved["results"]
    results = {}
    for seed in (int(s) for s in _SEEDS.value):
        results[seed] = run_seed(root, seed, runs, fractions, steps, earlier.get(str(seed)))
        write_json_atomic(root / "robust.json", {"steps": steps, "fractions": fractions,
                                                 "results": {str(k): v for k, v in results.items()}})
    text = table(results, steps, fractions)
    write_text_atomic(root / "robust.md", text)
    print(text)
    for path in figures(results, steps, fractions, root):
        print(f"figure: {path}")


if __name__ == "__main__":
    app.run(main)

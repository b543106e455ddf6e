"""The relearning attack on saved systems, side by side: how fast does what each forgot come back?

```
python -m benchmarks.relearning --config=configs/mnist.py \
    --systems=original=runs/pipeline/seed_0/train,retrain=runs/pipeline/seed_0/retrain,... \
    [--attack_steps=0,10,25,50,100] [--attack_fraction=0.1] [--relearning_json=runs/relearning.json]
python -m benchmarks.relearning --experiment=runs/edr_sweep [--attack_edr=0.06] \
    [--attack_methods=scu,retrain,...]        # then `scu-report --workdir=runs/edr_sweep`
```
Each system (`name=workdir`; the name is its method, `original` for the trained system) is
attacked by `runs/relearn.relearning_curve` with the same part of D_e, batches and reading key;
the table gives the forgotten behaviour after each number of steps and the first step count at
which the backdoor accuracy is back above 50 %. With `--experiment`, every finished system of an
scu-experiment directory at one EDR, every seed (`experiments/relearning.py`): the curves go to
its relearning.json (resumable), and `scu-report` puts their table and figure in REPORT.md.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from absl import app, flags
from ml_collections import config_flags

from scu_jax.runs.files import write_text_atomic

_CONFIG = config_flags.DEFINE_config_file("config", None, "The systems' configuration.")
_SYSTEMS = flags.DEFINE_list("systems", [], "name=workdir pairs (name: the method, or original).")
# Names of their own: the benchmarks' modules share absl's flags when imported together.
_STEPS = flags.DEFINE_list("attack_steps", ["0", "10", "25", "50", "100"],
                           "Attack steps to read after.")
_FRACTION = flags.DEFINE_float("attack_fraction", 0.1, "The part of D_e the attacker trains on.")
_OUT = flags.DEFINE_string("relearning_json", "", "Where the JSON results go (empty: none).")
_EXPERIMENT = flags.DEFINE_string("experiment", "", "An scu-experiment directory: attack its "
                                  "systems instead of --config/--systems.")
_EDR = flags.DEFINE_float("attack_edr", None, "With --experiment: the groups' EDR (default: "
                          "the bases').")
_METHODS = flags.DEFINE_list("attack_methods", [], "With --experiment: only these systems "
                             "(methods, or original; default: all).")


def attack(config, systems: dict[str, str], steps: list[int], fraction: float
           ) -> dict[str, list[dict[str, Any]]]:
    from scu_jax.runs.relearn import relearning_curve

    curves = {}
    for name, workdir in systems.items():
        method_config = config.copy_and_resolve_references()
        if name != "original":
            method_config.unlearning.method = name
        curves[name] = relearning_curve(method_config, workdir, fraction=fraction, steps=steps)
        print(f"{name}: {[round(next(v for k, v in e.items() if k in _READS), 3) for e in curves[name]]}",
              file=sys.stderr, flush=True)
    return curves


_READS = ("backdoor_accuracy", "mse_erased")


def table(curves: dict[str, list[dict[str, Any]]]) -> str:
    first = next(iter(curves.values()))
    read = next(k for k in _READS if k in first[0])
    scale, unit = (100, " %") if read == "backdoor_accuracy" else (1, "")
    steps = [entry["steps"] for entry in first]
    header = "| system | " + " | ".join(f"{s} steps" for s in steps) + (
        " | back above 50 % after |" if read == "backdoor_accuracy" else " |")
    lines = [header, "|---" * (len(steps) + 1 + (read == "backdoor_accuracy")) + "|"]
    for name, curve in curves.items():
        cells = [f"{scale * entry[read]:.1f}{unit}" for entry in curve]
        if read == "backdoor_accuracy":
            above = [entry["steps"] for entry in curve if entry[read] > 0.5]
            cells.append(f"{above[0]} steps" if above else f"not within {steps[-1]}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        sys.exit(f"benchmarks.relearning: error: unexpected arguments: {' '.join(argv[1:])}")
    try:
        steps = [int(s) for s in _STEPS.value]
    except ValueError:
        sys.exit("benchmarks.relearning: error: --attack_steps must be integers")
    if _EXPERIMENT.value:
        _attack_experiment(steps)
        return
    if _EDR.value is not None or _METHODS.value:
        sys.exit("benchmarks.relearning: error: --attack_edr and --attack_methods choose an "
                 "experiment's systems: they need --experiment")
    pairs = [item.split("=", 1) for item in _SYSTEMS.value]
    if _CONFIG.value is None or not pairs or any(len(p) != 2 or not all(p) for p in pairs):
        sys.exit("benchmarks.relearning: error: --config and --systems=name=workdir,... needed "
                 "(or --experiment)")
    try:
        curves = attack(_CONFIG.value, dict(pairs), steps, _FRACTION.value)
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"benchmarks.relearning: error: {error}")
    if _OUT.value:
        write_text_atomic(_OUT.value, json.dumps(curves, indent=2) + "\n")
    print(table(curves))


def _attack_experiment(steps: list[int]) -> None:
    from scu_jax.experiments.relearning import (attack_experiment, relearning_lines,
                                                relearning_summary)
    from scu_jax.runs.logs import quiet_library_logs

    if _CONFIG.value is not None or _SYSTEMS.value or _OUT.value:
        sys.exit("benchmarks.relearning: error: --experiment attacks the experiment's own "
                 "systems into its relearning.json: drop --config, --systems and "
                 "--relearning_json")
    if not 0.0 < _FRACTION.value < 1.0 or not steps or steps[0] < 0 or any(
            b <= a for a, b in zip(steps, steps[1:])):
        sys.exit("benchmarks.relearning: error: --attack_fraction must be in (0, 1) and "
                 "--attack_steps increasing from >= 0")
    quiet_library_logs()
    try:
        data = attack_experiment(_EXPERIMENT.value, edr=_EDR.value, steps=steps,
                                 fraction=_FRACTION.value, methods=_METHODS.value,
                                 log=lambda line: print(line, file=sys.stderr, flush=True))
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"benchmarks.relearning: error: {error}")
    print("\n".join(relearning_lines(relearning_summary(data))))


if __name__ == "__main__":
    app.run(main)

"""What the forget-set benchmarks share: their base config, the settings' configs and the
relearning attack on their systems."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import numpy as np

from benchmarks.variants import apply_variant
from scu_jax.config import default_config, validate_config


def setting_config(base, setting: str, seed: int):
    config = base.copy_and_resolve_references()
    config.seed = seed
    if setting.startswith("class"):
        config.forget.kind, config.forget.class_id = "class", int(setting[len("class"):])
    elif setting.startswith("random"):
        config.forget.kind, config.forget.fraction = "random", float(setting[len("random"):])
    else:
        raise ValueError(f"--settings: {setting!r} is neither classN nor randomF")
    validate_config(config)
    return config


def base_config(overrides: list[str]):
    config = default_config()
    config.forget.kind = "random"
    config.evaluation.mi_steps = 0
    for item in overrides:
        field, _, value = item.partition("=")
        node = config
        *parents, leaf = field.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = json.loads(value)
    validate_config(config)
    return config


def relearning_rows(base, seed: int, root: pathlib.Path, settings, methods,
                    steps: list[int], done=frozenset()) -> list[dict[str, Any]]:
    """The relearning attack on every finished system of one seed (a diverged method saved
    none) but those in `done` ((seed, setting, method) already attacked): {seed, setting,
    method, steps, curve}."""
    from scu_jax.runs.relearn import relearning_curve

    rows = []
    for setting in settings:
        config = setting_config(base, setting, seed)
        for method in ["original", *methods, "retrain"]:
            workdir = root / f"seed{seed}" / ("train" if method == "original"
                                               else f"{setting}/{method}")
            if (seed, setting, method) in done or not (workdir / "results.json").exists():
                continue
            method_config = (config.copy_and_resolve_references() if method == "original"
                             else apply_variant(config, method))
            rows.append({"seed": seed, "setting": setting, "method": method, "steps": steps,
                         "curve": relearning_curve(method_config, workdir, steps=steps)})
    return rows


def relearning_markdown(rows: list[dict[str, Any]], settings, methods) -> str:
    """Per setting: D_e's error after each number of attack steps (mean ± std over seeds), and
    its difference to retraining's at the last step (same seed)."""
    out = []
    for setting in settings:
        chosen = [r for r in rows if r["setting"] == setting]
        if not chosen:
            continue
        steps = [point["steps"] for point in chosen[0]["curve"]]
        out += [f"\n**{setting}, relearning attack** (MSE of the D_e images the attack never saw "
                f"after k steps on the rest; seeds {', '.join(map(str, sorted({r['seed'] for r in chosen})))})\n",
                "| system | " + " | ".join(f"{k} steps" for k in steps)
                + f" | Δ retrain at {steps[-1]} |", "|---" * (len(steps) + 2) + "|"]
        retrain = {r["seed"]: r["curve"][-1]["mse_erased"] for r in chosen
                   if r["method"] == "retrain"}
        for method in ["original", *methods, "retrain"]:
            mine = [r for r in chosen if r["method"] == method]
            if not mine:
                continue
            values = np.array([[p["mse_erased"] for p in r["curve"]] for r in mine])
            delta = [r["curve"][-1]["mse_erased"] - retrain[r["seed"]] for r in mine
                     if r["seed"] in retrain]
            out.append(f"| {method} | " + " | ".join(
                f"{m:.2f} ± {d:.2f}" for m, d in zip(values.mean(0), values.std(0)))
                + (f" | {np.mean(delta):+.2f} |" if delta else " | – |"))
    return "\n".join(out) + "\n"

"""The relearning attack over an experiment's systems, and its summary for the report.

`attack_experiment` runs `runs.relearn.relearning_curve` on every finished system (the original,
retraining and each method) of the groups at one grid EDR, and keeps the curves in
WORKDIR/relearning.json, rewritten after each curve, so an interrupted attack resumes where it
stopped (a curve already there is kept; the file holds one attack's steps and fraction). `relearning_summary`
and `relearning_lines` read that file alone (no JAX work): per EDR and method, the forgotten behaviour's
mean ± std over seeds after each number of steps, and for each seed the first step count at which
the backdoor accuracy is back above 50 %; `scu-report` puts both and a figure in REPORT.md.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Callable, Sequence

import ml_collections
import numpy as np

from scu_jax.experiments.aggregate import method_order
from scu_jax.experiments.grid import ORIGINAL, cell_config, expand
from scu_jax.experiments.rows import read_rows
from scu_jax.experiments.workdir import RELEARNING_FILE, group_dir, read_experiment
from scu_jax.runs.files import write_text_atomic

BACK_ABOVE = 0.5  # the backdoor accuracy that counts as "came back"


def _cell_dir(root: pathlib.Path, cell) -> pathlib.Path:
    directory = group_dir(root, cell.group.id)
    return directory / ("train" if cell.method == ORIGINAL else cell.name)


def attack_experiment(workdir: str | pathlib.Path, *, edr: float | None = None,
                      steps: Sequence[int] = (0, 10, 25, 50, 100), fraction: float = 0.1,
                      methods: Sequence[str] = (),
                      log: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """Attacks every finished system of the groups at `edr` (default: the bases' EDR; only
    `methods`, if given) and returns relearning.json's content (see the module docstring).

    Raises:
      FileNotFoundError: `workdir` is not an experiment directory.
      ValueError: no group of the grid is at `edr`, or no system there is finished.
    """
    from scu_jax.runs.relearn import relearning_curve  # JAX work: only here, not in the report

    root = pathlib.Path(workdir)
    experiment = read_experiment(root)
    config = ml_collections.ConfigDict(experiment["config"])
    cells = expand(config)
    if edr is None:
        edr = next(iter(config.bases.values())).erasure.edr
    chosen = [c for c in cells if abs(c.group.edr - edr) < 1e-9
              and (not methods or c.method in methods)]
    unknown = sorted(set(methods) - {c.method for c in cells})
    if unknown:
        raise ValueError(f"{', '.join(unknown)}: not a method of {root}'s grid "
                         f"({', '.join(sorted({c.method for c in cells}))})")
    if not chosen:
        raise ValueError(f"no cell of {root} is at EDR {edr:g}")
    finished = {row["cell"] for row in read_rows(root, order=[c.id for c in cells])
                if row.get("status") == "ok"}
    chosen = [c for c in chosen if c.id in finished]
    if not chosen:
        raise ValueError(f"no system of {root} at EDR {edr:g} is finished: run the experiment")
    path = root / RELEARNING_FILE
    data = read_curves(path) if path.exists() else {"curves": []}
    steps = [int(s) for s in steps]
    other = {(tuple(e["steps"]), e["fraction"]) for e in data["curves"]} - {(tuple(steps), fraction)}
    if other:  # one attack per file, so that every curve of the summary is comparable
        (old_steps, old_fraction), *_ = other
        raise ValueError(f"{path} holds an attack with steps {list(old_steps)} and fraction "
                         f"{old_fraction:g}: attack with those, or move the file away first")
    for cell in chosen:
        if any(entry["cell"] == cell.id for entry in data["curves"]):
            continue
        cell_config_ = cell_config(config.bases[cell.group.dataset], cell)
        curve = relearning_curve(cell_config_, _cell_dir(root, cell), fraction=fraction,
                                 steps=steps)
        data["curves"].append({
            "cell": cell.id, **cell.fields(), "name": cell.name, "steps": steps,
            "fraction": fraction, "curve": curve})
        write_text_atomic(path, json.dumps(data, indent=2) + "\n")
        log(f"{cell.id}: " + ", ".join(f"{_value(e):.3f}" for e in curve))
    return data


def read_curves(path: pathlib.Path) -> dict[str, Any]:
    """relearning.json's content, checked.

    Raises:
      ValueError: it is not what `attack_experiment` writes.
    """
    try:
        data = json.loads(path.read_text())
        if not (isinstance(data, dict) and isinstance(data.get("curves"), list) and all(
                isinstance(e, dict) and _FIELDS <= set(e) for e in data["curves"])):
            raise ValueError
    except ValueError:
        raise ValueError(f"{path} is not a relearning attack's file: move it away to attack "
                         "afresh") from None
    return data


# An entry's fields: its cell, the cell's grid fields, the attack and its curve.
_FIELDS = {"cell", "dataset", "channel", "family", "snr_db", "edr", "seed", "method", "beta_u",
           "name", "steps", "fraction", "curve"}


def _value(entry: dict[str, Any]) -> float:
    return entry.get("backdoor_accuracy", entry.get("mse_erased"))


def relearning_summary(data: dict[str, Any]) -> dict[tuple, dict[str, dict[str, Any]]]:
    """{(dataset, channel, family, snr_db, edr): {system: {steps, fraction, mean, std, seeds,
    back_above}}}: the seeds of one system at one setting together (a system is a cell name:
    the method, with its β_u where the grid has several), in report order; `back_above` lists
    each seed's first step count with backdoor accuracy > 50 % (None: not within the attack)."""
    grouped: dict[tuple, dict[tuple, list[dict[str, Any]]]] = {}
    for entry in data.get("curves", []):
        setting = tuple(entry[k] for k in ("dataset", "channel", "family", "snr_db", "edr"))
        system = (entry["method"], entry["beta_u"], entry.get("known_fraction"))
        grouped.setdefault(setting, {}).setdefault(system, []).append(entry)
    summary = {}
    for key, by_system in sorted(grouped.items()):
        summary[key] = {}
        for system in sorted(by_system, key=lambda s: (method_order(s[0]), s[1] or 0, s[2] or 0)):
            method, beta_u, known = system
            entries = sorted(by_system[system], key=lambda e: e["seed"])
            several = sum(s[0] == method and s[2] == known for s in by_system) > 1
            label = f"{method} (β_u {beta_u:g})" if several else method
            label += "" if known is None else f", {100 * known:g} % known"
            values = np.array([[_value(point) for point in e["curve"]] for e in entries])
            summary[key][label] = {
                "steps": entries[0]["steps"], "fraction": entries[0]["fraction"],
                "mean": values.mean(axis=0).tolist(),
                "std": values.std(axis=0).tolist(), "seeds": [e["seed"] for e in entries],
                "back_above": [next((p["steps"] for p in e["curve"]
                                     if p.get("backdoor_accuracy", 0.0) > BACK_ABOVE), None)
                               for e in entries]}
    return summary


def relearning_lines(summary) -> list[str]:
    """One markdown table per (dataset, EDR): backdoor accuracy % (mean ± std over seeds) after
    each number of attack steps, and each seed's steps to above 50 %."""
    out = []
    for (dataset, channel, family, snr_db, edr), by_method in summary.items():
        first = next(iter(by_method.values()))
        steps = first["steps"]
        out += [f"**{dataset}, {channel} ({family}) {snr_db:g} dB, EDR {100 * edr:g} %** "
                "(backdoor accuracy %, mean ± std over "
                f"seeds {', '.join(str(s) for s in first['seeds'])}; the attack trains on "
                f"{100 * first['fraction']:g} % of D_e)\n",
                "| system | " + " | ".join(f"{s} steps" for s in steps)
                + " | back above 50 % after (per seed) |",
                "|---" * (len(steps) + 2) + "|"]
        for method, entry in by_method.items():
            cells = [f"{100 * m:.1f} ± {100 * s:.1f}" for m, s in zip(entry["mean"], entry["std"])]
            back = ", ".join("–" if b is None else str(b) for b in entry["back_above"])
            out.append(f"| {method} | " + " | ".join(cells) + f" | {back} |")
        out.append(f"\n(–: not above 50 % within {steps[-1]} steps.)\n")
    return out

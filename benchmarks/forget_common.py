"""What the forget-set benchmarks share: their base config, the settings' configs and the
relearning attack on their systems."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import numpy as np

from benchmarks.variants import apply_variant
from scu_jax.config import default_config, validate_config


def worst_case_of(root: pathlib.Path, seed: int, setting: str) -> dict[str, Any]:
    """The worst-case set of a `worstF` setting for the seed's trained system
    (`runs.worst_case.worst_case_request`: found once, then read from WORKDIR/seedS)."""
    from scu_jax.runs.worst_case import worst_case_request

    return worst_case_request(root / f"seed{seed}" / "train", float(setting[len("worst"):]),
                              cache_dir=root / f"seed{seed}", seed=seed)


def check_setting(setting: str) -> None:
    """Raises `ValueError` (one line) unless `setting` is classN, randomF (F in (0, 1)) or worstF
    (F a fraction in (0, 1) or a count >= 1): before any work."""
    for prefix, number in (("class", int), ("random", float), ("worst", float)):
        if setting.startswith(prefix):
            try:
                value = number(setting[len(prefix):])
            except ValueError:
                break
            if (prefix == "class" and value >= 0) or (prefix == "random" and 0 < value < 1) or (
                    prefix == "worst" and (0 < value < 1 or (value >= 1 and value == int(value)))):
                return
            break
    raise ValueError(f"--settings: {setting!r} is none of classN, randomF (F in (0, 1)), worstF "
                     "(F in (0, 1), or a count)")


def setting_config(base, setting: str, seed: int, root: pathlib.Path | None = None):
    """The config of a setting: `classN` (every image of class N), `randomF` (a random fraction
    F), `worstF` (the worst-case set of F of the training set for the seed's system in
    `root`, an ids request)."""
    config = base.copy_and_resolve_references()
    config.seed = seed
    if setting.startswith("class"):
        config.forget.kind, config.forget.class_id = "class", int(setting[len("class"):])
    elif setting.startswith("random"):
        config.forget.kind, config.forget.fraction = "random", float(setting[len("random"):])
    elif setting.startswith("worst") and root is not None:
        config.forget.kind = "ids"
        config.forget.ids_file = worst_case_of(root, seed, setting)["path"]
    else:
        raise ValueError(f"--settings: {setting!r} is none of classN, randomF, worstF")
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
        config = setting_config(base, setting, seed, root)
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


# Gaps to retraining compared between a worst-case set and a random set of the same size.
GAPS = (("mse_erased", "MSE D_e", 2), ("accuracy_erased", "acc D_e", 3))


def worst_case_lines(rows: list[dict[str, Any]], settings, methods) -> list[str]:
    """For each `worstF` setting with its `randomF` beside it: per method, the mean over seeds
    of |its value − the same seed's retraining's| on D_e's MSE and accuracy, on each set, and
    the ratio worst / random (above 1: the worst-case set hides a larger gap); for the MSE also
    the share of the original's gap the method closes on each (1 − gap / the original's gap);
    which method suffers most; the search's time."""
    out = []
    for worst in [s for s in settings if s.startswith("worst")]:
        random_ = "random" + worst[len("worst"):]
        if random_ not in settings:
            continue
        retrain = {(r["setting"], r["seed"]): r for r in rows if r["method"] == "retrain"}
        table, ratios, do_nothing = [], {}, {}
        for method in ["original", *methods]:
            cells = [method]
            for key, _, digits in GAPS:
                gaps = []
                for setting in (random_, worst):
                    mine = [abs(r[key] - retrain[(setting, r["seed"])][key]) for r in rows
                            if r["setting"] == setting and r["method"] == method
                            and r.get("status") != "non-finite" and key in r
                            and (setting, r["seed"]) in retrain]
                    gaps.append(float(np.mean(mine)) if mine else float("nan"))
                ratio = gaps[1] / gaps[0] if gaps[0] > 0 else float("nan")
                ratios.setdefault(method, {})[key] = ratio
                cells += [f"{gaps[0]:.{digits}f}", f"{gaps[1]:.{digits}f}", f"{ratio:.2f}"]
                if key == "mse_erased":
                    do_nothing = do_nothing or dict(zip((random_, worst), gaps))
                    cells += [f"{1 - gap / do_nothing[name]:.2f}" if do_nothing[name] else "–"
                              for name, gap in zip((random_, worst), gaps)]
            table.append("| " + " | ".join(cells) + " |")
        seconds = [r["worst_case_seconds"] for r in rows
                   if r["setting"] == worst and "worst_case_seconds" in r and r["method"] == "retrain"]
        sizes = sorted({r["num_erased"] for r in rows if r["setting"] == worst})
        fast = [m for m in methods if np.isfinite(ratios[m]["mse_erased"])]
        most = max(fast, key=lambda m: ratios[m]["mse_erased"]) if fast else "–"
        out += [f"\n**{worst} against {random_}** (|D_e| = {', '.join(map(str, sizes))}; the "
                f"search took {', '.join(f'{s:.1f}' for s in seconds)} s per seed): |method − "
                "retraining| on D_e, mean over seeds\n",
                "| method | MSE D_e random | worst | worst / random | share of the original's "
                "gap closed, random | worst | acc D_e random | worst | worst / random |",
                "|---" * 9 + "|", *table,
                f"\n(nan: no seed's run finished.) Suffers most (largest MSE-gap ratio): "
                f"**{most}**.\n"]
    return out


def worst_case_figure(rows: list[dict[str, Any]], settings, methods, path: pathlib.Path) -> bool:
    """Bars of each method's |gap to retraining| on D_e's MSE, random set beside worst-case set
    (log axis, mean over seeds), one panel per `worstF` setting with its `randomF`; False (and no
    file) where there is none."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = [(w, "random" + w[len("worst"):]) for w in settings
             if w.startswith("worst") and "random" + w[len("worst"):] in settings]
    if not pairs:
        return False
    figure, axes = plt.subplots(1, len(pairs), figsize=(7.5 * len(pairs), 3.4), squeeze=False)
    names = ["original", *methods]
    for ax, (worst, random_) in zip(axes[0], pairs):
        retrain = {(r["setting"], r["seed"]): r["mse_erased"] for r in rows
                   if r["method"] == "retrain"}
        for offset, (setting, colour) in enumerate(((random_, "C0"), (worst, "C3"))):
            gaps = [np.mean([abs(r["mse_erased"] - retrain[(setting, r["seed"])]) for r in rows
                             if r["method"] == m and r["setting"] == setting
                             and "mse_erased" in r and (setting, r["seed"]) in retrain] or [np.nan])
                    for m in names]
            ax.bar(np.arange(len(names)) + 0.4 * offset - 0.2, gaps, 0.4, color=colour,
                   label=setting)
        ax.set_yscale("log")
        ax.set_xticks(np.arange(len(names)), names, rotation=30, fontsize=8)
        ax.set_ylabel("|MSE D_e − retraining's| (SSE / image)")
        ax.set_title(f"{worst} against {random_}: gap to retraining, mean over seeds", fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True

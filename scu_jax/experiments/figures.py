"""The figures of an experiment directory, drawn with matplotlib from its rows and samples.

Every figure is written as PNG and PDF under WORKDIR/figures, each through a temporary file
renamed into place.
"""

from __future__ import annotations

import math
import pathlib
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the non-interactive backend)
import numpy as np  # noqa: E402

from scu_jax.evaluation import roc_auc  # noqa: E402
from scu_jax.experiments.aggregate import METHOD_ORDER, SETTING_FIELDS, method_order  # noqa: E402
from scu_jax.experiments.grid import ORIGINAL  # noqa: E402
from scu_jax.experiments.workdir import SAMPLES_FILE, group_dir  # noqa: E402
from scu_jax.runs.files import atomic_path  # noqa: E402

# (results key, label, scale, decimals, log axis)
METRICS = (
    ("backdoor_accuracy", "backdoor accuracy on D_e (%)", 100, 1, False),
    ("backdoor_accuracy_all", "backdoor accuracy, every triggered image (%)", 100, 1, False),
    ("backdoor_accuracy_unknown", "backdoor accuracy, triggered images not in D_e (%)", 100, 1,
     False),
    ("accuracy_clean", "accuracy on D_clean (%)", 100, 1, False),
    ("accuracy_test", "test accuracy (%)", 100, 1, False),
    ("mse_clean", "MSE clean (SSE / image)", 1, 2, False),
    ("mse_erased", "MSE erased (SSE / image)", 1, 2, False),
    ("psnr_clean", "PSNR clean (dB)", 1, 2, False),
    ("ssim_clean", "SSIM clean", 1, 3, False),
    ("mia_auc", "membership-inference AUC", 1, 3, False),
    ("mi_mine_erased", "MINE I(x; z) on D_e (nats)", 1, 2, False),
    ("mi_upper_erased", "I(x; z) upper bound on D_e (nats)", 1, 1, False),
    ("kl_to_retrain", "KL to retrained posterior on D_e", 1, 2, False),
    ("mse_to_retrain", "x̂ SSE to retrained system", 1, 2, False),
    ("unlearn_seconds", "unlearning time (s)", 1, 2, True),
)
AXES = {  # swept field → (label, scale, log axis)
    "edr": ("erased data ratio EDR (%)", 100, False),
    "snr_db": ("channel SNR (dB)", 1, False),
    "beta_u": ("β_u", 1, True),
    "known_fraction": ("share of D_e known to the methods (%)", 100, False),
}
OVERVIEW = ("backdoor_accuracy", "accuracy_clean", "mse_clean", "unlearn_seconds")


def relearning_figure(summary, directory: pathlib.Path) -> list[str]:
    """The relearning attack (`experiments.relearning.relearning_summary`): backdoor accuracy against
    attack steps, a line per system (mean ± std over seeds), a panel per (dataset, EDR)."""
    if not summary:
        return []
    figure, axes = plt.subplots(1, len(summary), figsize=(6.4 * len(summary), 3.6), squeeze=False)
    colours = [f"C{i}" for i in range(10) if i != 7]  # C7 is grey: the references' colour
    for ax, ((dataset, channel, _, snr_db, edr), by_method) in zip(axes[0], summary.items()):
        methods = [m for m in by_method if m not in ("retrain", ORIGINAL)]
        for method, entry in by_method.items():
            mean, std = 100 * np.array(entry["mean"]), 100 * np.array(entry["std"])
            style = ({"color": "black", "ls": "--"} if method == ORIGINAL else
                     {"color": "grey", "ls": "--"} if method == "retrain" else
                     {"color": colours[methods.index(method) % len(colours)]})
            ax.plot(entry["steps"], mean, marker="o", ms=3, label=method, **style)
            ax.fill_between(entry["steps"], mean - std, mean + std, alpha=0.15,
                            color=style["color"])
        ax.axhline(50, color="black", lw=0.8, ls=":")
        share = 100 * next(iter(by_method.values()))["fraction"]
        ax.set_xlabel(f"attack steps (training on {share:g} % of D_e)")
        ax.set_ylabel("backdoor accuracy on the rest of D_e (%)")
        ax.set_title(f"relearning attack, {dataset}, {channel} {snr_db:g} dB, EDR {100 * edr:g} % "
                     f"(mean ± std over "
                     f"{len(next(iter(by_method.values()))['seeds'])} seeds)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    figure.tight_layout()
    return _save(figure, directory, "relearning")


def _save(figure, directory: pathlib.Path, stem: str) -> list[str]:
    names = []
    for extension in ("png", "pdf"):
        final = directory / f"{stem}.{extension}"
        with atomic_path(final) as tmp:
            figure.savefig(tmp, dpi=110, bbox_inches="tight", format=extension)
        names.append(final.name)
    plt.close(figure)
    return names


def _panel_title(setting: dict[str, Any], axis: str) -> str:
    parts = [setting["dataset"], f"{setting['channel']} ({setting['family']})"]
    if axis != "snr_db":
        parts.append(f"{setting['snr_db']:g} dB")
    if axis != "edr":
        parts.append(f"EDR {100 * setting['edr']:g} %")
    if setting.get("beta_u") is not None:
        parts.append(f"β_u {setting['beta_u']:g}")
    if setting.get("known_fraction") is not None:
        parts.append(f"{100 * setting['known_fraction']:g} % of D_e known")
    return ", ".join(parts)


def _curves(summary, axis: str, several_betas: bool):
    """{panel setting (without the axis) → {line label → [(x, entry)]}} for one swept axis."""
    panels: dict[tuple, dict[str, list]] = {}
    for key, entry in summary.items():
        setting = dict(zip(SETTING_FIELDS, key[:-1]))
        method = key[-1]
        x = setting.pop(axis)
        if axis != "beta_u":
            setting.pop("beta_u")  # a method at several β_u is several lines of one panel
        label = method if axis == "beta_u" or key[5] is None or not several_betas else (
            f"{method} (β_u {key[5]:g})")
        panel = panels.setdefault(tuple(sorted(setting.items())), {})
        panel.setdefault(label, []).append((x, entry))
    return panels


def _draw_panel(ax, lines, metric: str, mscale: float, scale: float, axis: str) -> bool:
    drawn = False
    # One colour per method; names outside METHOD_ORDER (a benchmark's variants) are dashed, each
    # in a colour no method of the panel has.
    orders = {label: method_order(label.split(" ")[0]) for label in lines}
    spare = iter([c for c in range(10) if c not in set(orders.values())] + list(range(10)) * 9)
    for line_label, points in sorted(lines.items(), key=lambda i: orders[i[0]]):
        curve = sorted((x, e[metric]) for x, e in points if x is not None and metric in e)
        if curve:
            drawn = True
            xs = np.array([x * scale for x, _ in curve])
            mean = np.array([m * mscale for _, (m, _, _) in curve])
            std = np.array([s * mscale for _, (_, s, _) in curve])
            variant = orders[line_label] == len(METHOD_ORDER)
            style = {"ls": "--"} if variant else {}
            colour = f"C{next(spare) if variant else orders[line_label] % 10}"
            ax.plot(xs, mean, marker="o", ms=3, label=line_label, color=colour, **style)
            ax.fill_between(xs, mean - std, mean + std, alpha=0.2, color=colour)
        elif axis == "beta_u":  # a method without β_u: its level as a reference line
            for x, e in points:
                if metric in e:
                    ax.axhline(e[metric][0] * mscale, ls="--", lw=1, color="grey")
                    ax.annotate(line_label, (1.0, e[metric][0] * mscale), fontsize=7, ha="right",
                                va="bottom", color="grey", xycoords=("axes fraction", "data"))
    return drawn


def axis_figures(summary, directory: pathlib.Path) -> list[str]:
    """For each swept axis: every metric against it (one panel per other setting, e.g. per
    channel), mean ± std over seeds, one line per method; and an overview of the key metrics."""
    written = []
    values = {axis: {key[SETTING_FIELDS.index(axis)] for key in summary} - {None} for axis in AXES}
    for axis, (xlabel, scale, log_x) in AXES.items():
        if len(values[axis]) < 2:
            continue
        panels = sorted(_curves(summary, axis, len(values["beta_u"]) > 1).items())
        for stem, metrics in ([(f"{axis}_{m[0]}", [m]) for m in METRICS]
                              + [(f"{axis}_overview", [m for m in METRICS if m[0] in OVERVIEW])]):
            # One panel column per setting and a row per metric; a single setting's metrics wrap
            # into two columns.
            wrap = len(panels) == 1 and len(metrics) > 1
            rows, columns = ((math.ceil(len(metrics) / 2), 2) if wrap
                             else (len(metrics), len(panels)))
            figure, grid = plt.subplots(rows, columns, squeeze=False,
                                        figsize=(4.2 * columns, 3.0 * rows))
            drawn = False
            for column, (panel, lines) in enumerate(panels):
                for row_index, (metric, label, mscale, _, log_y) in enumerate(metrics):
                    ax = (grid[row_index // 2][row_index % 2] if wrap else grid[row_index][column])
                    drawn |= _draw_panel(ax, lines, metric, mscale, scale, axis)
                    if axis == "known_fraction" and metric.startswith("backdoor_accuracy"):
                        ax.axhline(20, color="black", lw=0.8, ls=":")  # the report's "cleared"
                    ax.set_xlabel(xlabel)
                    ax.set_ylabel(label)
                    if log_x:
                        ax.set_xscale("log")
                    if log_y:
                        ax.set_yscale("log")
                    if row_index == 0 or wrap:
                        ax.set_title(_panel_title(dict(panel), axis), fontsize=9)
                    ax.grid(alpha=0.3)
            if not drawn:
                plt.close(figure)
                continue
            handles, labels = grid[0][0].get_legend_handles_labels()
            figure.tight_layout()
            figure.legend(handles, labels, loc="upper center", ncol=min(len(labels), 7), fontsize=8,
                          bbox_to_anchor=(0.5, 0.0))
            written += _save(figure, directory, stem)
    return written


def time_figure(rows: Sequence[dict[str, Any]], directory: pathlib.Path) -> list[str]:
    """Unlearning wall time per method over every finished cell, log axis, retrain as reference."""
    times: dict[str, list[float]] = {}
    for row in rows:
        if row.get("status") == "ok" and row["method"] != ORIGINAL and row.get("unlearn_seconds"):
            times.setdefault(row["method"], []).append(row["unlearn_seconds"])
    if not times:
        return []
    methods = sorted(times, key=method_order)
    figure, ax = plt.subplots(figsize=(1.1 * len(methods) + 2.5, 3.4))
    means = [np.mean(times[m]) for m in methods]
    stds = [np.std(times[m]) for m in methods]
    ax.bar(methods, means, yerr=stds, capsize=3,
           color=["grey" if m == "retrain" else "C0" for m in methods])
    if "retrain" in times:
        ax.axhline(np.mean(times["retrain"]), ls="--", color="grey", lw=1, label="retrain")
        for index, m in enumerate(methods):
            if m != "retrain":
                ax.annotate(f"{np.mean(times['retrain']) / means[index]:.0f}×",
                            (index, means[index] + stds[index]),
                            ha="center", va="bottom", fontsize=8, xytext=(0, 4),
                            textcoords="offset points")
    ax.set_yscale("log")
    ax.set_ylabel("wall time (s), compilation excluded")
    cells = max(len(v) for v in times.values())
    ax.set_title(f"unlearning time per method (mean ± std over {cells} "
                 "cells; × = mean retraining time / mean time)", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    figure.tight_layout()
    return _save(figure, directory, "unlearning_time")


def _sample_group(rows: Sequence[dict[str, Any]], workdir: pathlib.Path,
                  bases: dict[str, Any]) -> tuple[str, dict] | None:
    """The group to draw samples from, and {cell name → samples}: the one at its base config's
    SNR and EDR with the smallest seed if there is one, else the first in sorted order."""
    def preference(row):
        base = bases.get(row["dataset"], {})
        at_base = (row["snr_db"] == base.get("channel", {}).get("snr_db")
                   and row["edr"] == base.get("erasure", {}).get("edr"))
        return (not at_base, row["seed"], row["group"])

    for group in dict.fromkeys(row["group"] for row in sorted(rows, key=preference)):
        found = {}
        for row in rows:
            if row["group"] == group and row.get("status") == "ok":
                name = row["cell"].rsplit("/", 1)[1]
                path = group_dir(workdir, group) / name / SAMPLES_FILE
                if path.exists():
                    with np.load(path) as data:
                        found[name] = {key: data[key] for key in data.files}
        if found:
            return group, dict(sorted(found.items(),
                                      key=lambda item: method_order(item[0].split("_bu")[0])))
    return None


def _as_image(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array, dtype=np.float32)
    if array.max() > 1.5:  # uint8 inputs
        array = array / 255.0
    return array[..., 0] if array.shape[-1] == 1 else array


def sample_figures(rows: Sequence[dict[str, Any]], workdir: pathlib.Path, directory: pathlib.Path,
                   bases: dict[str, Any]) -> list[str]:
    """The reconstruction grid (input / original / each method; clean and erased samples) and the
    membership-inference score histograms (erased vs never-seen) of one group."""
    picked = _sample_group(rows, workdir, bases)
    if picked is None:
        return []
    group, samples = picked
    first = next(iter(samples.values()))
    count = len(first["input_clean"])
    names = ["input"] + list(samples)
    figure, grid = plt.subplots(len(names), 2 * count + 1, squeeze=False,
                                figsize=(0.75 * (2 * count + 1), 0.8 * len(names) + 0.6))
    for r, name in enumerate(names):
        for c in range(2 * count + 1):
            ax = grid[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c == count:
                continue
            part, index = ("clean", c) if c < count else ("erased", c - count - 1)
            image = (first[f"input_{part}"][index] if name == "input"
                     else samples[name][f"x_hat_{part}"][index])
            ax.imshow(_as_image(image), cmap="gray", vmin=0, vmax=1)
        grid[r][0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    grid[0][count // 2].set_title("D_clean", fontsize=9)
    grid[0][count + 1 + count // 2].set_title("D_e (triggered)", fontsize=9)
    figure.suptitle(f"reconstructions through the channel: {group}", fontsize=9)
    written = _save(figure, directory, "reconstructions")

    columns = min(4, len(samples))
    rows = math.ceil(len(samples) / columns)
    figure, grid = plt.subplots(rows, columns, squeeze=False, figsize=(3.0 * columns, 2.6 * rows))
    for ax in grid.flat[len(samples):]:
        ax.set_visible(False)
    for ax, (name, data) in zip(grid.flat, samples.items()):
        members, outsiders = data["mia_members"], data["mia_outsiders"]
        bins = np.linspace(min(members.min(), outsiders.min()),
                           max(members.max(), outsiders.max()), 30)
        ax.hist(outsiders, bins=bins, alpha=0.55, density=True, label="never seen")
        ax.hist(members, bins=bins, alpha=0.55, density=True, label="erased (D_e)")
        ax.set_title(f"{name}: AUC {roc_auc(members, outsiders):.3f}", fontsize=9)
        ax.set_xlabel("score = −SSE", fontsize=8)
    grid[0][0].legend(fontsize=7)
    figure.suptitle(f"membership-inference scores: {group}", fontsize=9)
    figure.tight_layout()
    return written + _save(figure, directory, "membership_scores")

"""Figures and REPORT.md of an experiment directory (`scu-report`, and the end of a sweep).

Reads only WORKDIR/experiment.json, results.jsonl and the cells' samples.npz: no JAX work. Writes
`WORKDIR/figures/*.png|pdf` and `WORKDIR/REPORT.md`, each to a temporary file renamed into place.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import pathlib
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the non-interactive backend)
import numpy as np  # noqa: E402

from scu_jax.experiment import EXPERIMENT_FILE, ORIGINAL, SAMPLES_FILE, read_rows  # noqa: E402

REPORT_FILE = "REPORT.md"
FIGURES_DIR = "figures"
METHOD_ORDER = (ORIGINAL, "retrain", "scu", "scu_no_cc", "vbu", "hbu", "finetune")
# (results key, label, scale, decimals, log axis)
METRICS = (
    ("backdoor_accuracy", "backdoor accuracy on D_e (%)", 100, 1, False),
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
TABLE_METRICS = ("backdoor_accuracy", "accuracy_clean", "accuracy_test", "mse_clean", "mse_erased",
                 "psnr_clean", "mia_auc", "mi_upper_erased", "mse_to_retrain", "unlearn_seconds",
                 "speedup")
AXES = {  # swept field → (label, scale, log axis)
    "edr": ("erased data ratio EDR (%)", 100, False),
    "snr_db": ("channel SNR (dB)", 1, False),
    "beta_u": ("β_u", 1, True),
}
OVERVIEW = ("backdoor_accuracy", "accuracy_clean", "mse_clean", "unlearn_seconds")

# The paper's EDR tables (EDR 2/4/6/8/10 %), as the authors' result scripts hold them.
PAPER_EDRS = (0.02, 0.04, 0.06, 0.08, 0.10)
PAPER = {
    "mnist": {
        ORIGINAL: {"accuracy_clean": (97.8, 98.0, 97.2, 97.7, 97.0),
                   "backdoor_accuracy": (96.1, 97.0, 97.7, 97.4, 98.1),
                   "mse_clean": (2.70, 2.80, 2.79, 2.62, 2.53),
                   "mse_erased": (3.05, 3.05, 2.93, 2.79, 2.67)},
        "scu": {"accuracy_clean": (98.1, 98.3, 97.6, 97.9, 97.4),
                "backdoor_accuracy": (7.2, 8.8, 7.3, 7.1, 8.6),
                "mse_clean": (2.70, 2.80, 2.80, 2.61, 2.52),
                "mse_erased": (5.98, 6.30, 6.13, 5.94, 5.76)},
        "vbu": {"accuracy_clean": (52.0, 75.7, 68.2, 76.7, 0.8),
                "backdoor_accuracy": (3.7, 4.9, 2.1, 4.4, 4.4),
                "mse_clean": (33.8, 6.7, 72.0, 35.0, 265.5),
                "mse_erased": (39.1, 10.4, 77.5, 38.7, 269.6)},
        "hbu": {"accuracy_clean": (87.5, 0.5, 0.0, 0.9, 0.9),
                "backdoor_accuracy": (0.4, 4.5, 0.1, 2.1, 3.3),
                "mse_clean": (23.0, 285.3, 74.9, 179.1, 50.8),
                "mse_erased": (28.9, 289.3, 83.3, 184.3, 55.9)},
    },
    "cifar10": {
        ORIGINAL: {"accuracy_clean": (65.8, 68.1, 67.2, 69.7, 67.9),
                   "backdoor_accuracy": (97.1, 97.1, 98.5, 98.8, 99.7),
                   "mse_clean": (41.9, 39.4, 39.4, 38.3, 39.7),
                   "mse_erased": (42.7, 40.3, 39.4, 37.7, 39.0)},
        "scu": {"accuracy_clean": (51.3, 47.8, 55.0, 55.6, 53.6),
                "backdoor_accuracy": (9.8, 7.5, 4.2, 2.7, 2.9),
                "mse_clean": (42.4, 47.6, 43.3, 44.6, 43.5),
                "mse_erased": (53.2, 48.6, 45.2, 46.8, 46.0)},
        "vbu": {"accuracy_clean": (40.4, 44.8, 47.1, 40.8, 39.6),
                "backdoor_accuracy": (9.6, 7.0, 7.3, 3.6, 2.5),
                "mse_clean": (48.1, 64.0, 58.1, 55.3, 74.9),
                "mse_erased": (58.9, 64.8, 61.3, 57.6, 78.5)},
    },
}
# Which of our datasets and (channel, SNR) settings the published tables were measured in. MNIST:
# the table equals the AWGN SNR sweep's 5 dB column, while the shipped script trains through
# Rician K = 2 at 6 dB (On_MNIST/Unlearning_Semantic_VAE_on_Backdoor.py); both are shown.
PAPER_SETTINGS = {"mnist5k": ("mnist", (("awgn", 5.0), ("rician", 6.0))),
                  "mnist": ("mnist", (("awgn", 5.0), ("rician", 6.0))),
                  "cifar10": ("cifar10", (("awgn", 20.0),))}
PAPER_COLUMNS = (("accuracy_clean", "acc clean %", 100, 1), ("backdoor_accuracy", "backdoor %", 100, 1),
                 ("mse_clean", "MSE clean", 1, 2), ("mse_erased", "MSE erased", 1, 2))

_SETTING_FIELDS = ("dataset", "channel", "family", "snr_db", "edr", "beta_u")


# --- Aggregation ---------------------------------------------------------------------------------


def with_speedups(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The finished rows, each with `speedup` = the group's retraining time / its own time."""
    retrain = {row["group"]: row["unlearn_seconds"] for row in rows
               if row["method"] == "retrain" and row.get("status") == "ok"}
    out = []
    for row in rows:
        row = dict(row)
        seconds = row.get("unlearn_seconds")
        if row["group"] in retrain and seconds and row["method"] not in (ORIGINAL, "retrain"):
            row["speedup"] = retrain[row["group"]] / seconds
        out.append(row)
    return out


def _method_order(method: str) -> int:
    return METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)


def aggregate(rows: Sequence[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    """Mean, std and count over seeds of every metric, per (setting, method).

    Keys are `(dataset, channel, family, snr_db, edr, beta_u, method)`; a method without β_u has
    `beta_u` None. Rows whose method diverged count in `diverged`, not in the statistics.
    """
    buckets: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        key = tuple(row.get(field) for field in _SETTING_FIELDS) + (row["method"],)
        buckets.setdefault(key, []).append(row)
    summary = {}
    for key, members in buckets.items():
        ok = [row for row in members if row.get("status") == "ok"]
        entry: dict[str, Any] = {"seeds": len(ok), "diverged": len(members) - len(ok)}
        for metric in {m for row in ok for m, v in row.items() if isinstance(v, (int, float))}:
            values = [row[metric] for row in ok if isinstance(row.get(metric), (int, float))
                      and row[metric] is not None and math.isfinite(row[metric])]
            if values:
                entry[metric] = (float(np.mean(values)), float(np.std(values)), len(values))
        summary[key] = entry
    def order(item):
        key = item[0]
        setting = tuple((v is not None, v if v is not None else 0) for v in key[:5])
        return setting, _method_order(key[-1]), (key[5] is not None, key[5] or 0)

    return dict(sorted(summary.items(), key=order))


# --- Figures -------------------------------------------------------------------------------------


def _save(figure, directory: pathlib.Path, stem: str) -> list[str]:
    names = []
    for extension in ("png", "pdf"):
        final = directory / f"{stem}.{extension}"
        tmp = directory / f".{stem}.tmp.{extension}"
        figure.savefig(tmp, dpi=110, bbox_inches="tight")
        os.replace(tmp, final)
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
    return ", ".join(parts)


def _curves(summary, axis: str, several_betas: bool):
    """{panel setting (without the axis) → {line label → [(x, entry)]}} for one swept axis."""
    panels: dict[tuple, dict[str, list]] = {}
    for key, entry in summary.items():
        setting = dict(zip(_SETTING_FIELDS, key[:-1]))
        method = key[-1]
        x = setting.pop(axis)
        if axis != "beta_u":
            setting.pop("beta_u")  # a method at several β_u is several lines of one panel
        label = method if axis == "beta_u" or key[5] is None or not several_betas else (
            f"{method} (β_u {key[5]:g})")
        panels.setdefault(tuple(sorted(setting.items())), {}).setdefault(label, []).append((x, entry))
    return panels


def _draw_panel(ax, lines, metric: str, mscale: float, scale: float, axis: str) -> bool:
    drawn = False
    for line_label, points in sorted(lines.items(), key=lambda i: _method_order(i[0].split(" ")[0])):
        curve = sorted((x, e[metric]) for x, e in points if x is not None and metric in e)
        if curve:
            drawn = True
            xs = np.array([x * scale for x, _ in curve])
            mean = np.array([m * mscale for _, (m, _, _) in curve])
            std = np.array([s * mscale for _, (_, s, _) in curve])
            colour = f"C{_method_order(line_label.split(' ')[0]) % 10}"  # one colour per method
            ax.plot(xs, mean, marker="o", ms=3, label=line_label, color=colour)
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
    values = {axis: {key[_SETTING_FIELDS.index(axis)] for key in summary} - {None} for axis in AXES}
    for axis, (xlabel, scale, log_x) in AXES.items():
        if len(values[axis]) < 2:
            continue
        panels = sorted(_curves(summary, axis, len(values["beta_u"]) > 1).items())
        for stem, metrics in ([(f"{axis}_{m[0]}", [m]) for m in METRICS]
                              + [(f"{axis}_overview", [m for m in METRICS if m[0] in OVERVIEW])]):
            # One panel column per setting and a row per metric; a single setting's metrics wrap
            # into two columns.
            wrap = len(panels) == 1 and len(metrics) > 1
            rows, columns = ((math.ceil(len(metrics) / 2), 2) if wrap else (len(metrics), len(panels)))
            figure, grid = plt.subplots(rows, columns, squeeze=False,
                                        figsize=(4.2 * columns, 3.0 * rows))
            drawn = False
            for column, (panel, lines) in enumerate(panels):
                for row_index, (metric, label, mscale, _, log_y) in enumerate(metrics):
                    ax = (grid[row_index // 2][row_index % 2] if wrap else grid[row_index][column])
                    drawn |= _draw_panel(ax, lines, metric, mscale, scale, axis)
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
    methods = sorted(times, key=_method_order)
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
    ax.set_title(f"unlearning time per method (mean ± std over {max(len(v) for v in times.values())} "
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
                path = workdir / "runs" / group / name / SAMPLES_FILE
                if path.exists():
                    with np.load(path) as data:
                        found[name] = {key: data[key] for key in data.files}
        if found:
            return group, dict(sorted(found.items(), key=lambda i: _method_order(i[0].split("_bu")[0])))
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
            image = first[f"input_{part}"][index] if name == "input" else samples[name][f"x_hat_{part}"][index]
            ax.imshow(_as_image(image), cmap="gray", vmin=0, vmax=1)
        grid[r][0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    grid[0][count // 2].set_title("D_clean", fontsize=9)
    grid[0][count + 1 + count // 2].set_title("D_e (triggered)", fontsize=9)
    figure.suptitle(f"reconstructions through the channel: {group}", fontsize=9)
    written = _save(figure, directory, "reconstructions")

    from scu_jax.evaluation import roc_auc

    columns = min(4, len(samples))
    rows = math.ceil(len(samples) / columns)
    figure, grid = plt.subplots(rows, columns, squeeze=False, figsize=(3.0 * columns, 2.6 * rows))
    for ax in grid.flat[len(samples):]:
        ax.set_visible(False)
    for ax, (name, data) in zip(grid.flat, samples.items()):
        members, outsiders = data["mia_members"], data["mia_outsiders"]
        bins = np.linspace(min(members.min(), outsiders.min()), max(members.max(), outsiders.max()), 30)
        ax.hist(outsiders, bins=bins, alpha=0.55, density=True, label="never seen")
        ax.hist(members, bins=bins, alpha=0.55, density=True, label="erased (D_e)")
        ax.set_title(f"{name}: AUC {roc_auc(members, outsiders):.3f}", fontsize=9)
        ax.set_xlabel("score = −SSE", fontsize=8)
    grid[0][0].legend(fontsize=7)
    figure.suptitle(f"membership-inference scores: {group}", fontsize=9)
    figure.tight_layout()
    return written + _save(figure, directory, "membership_scores")


# --- REPORT.md -----------------------------------------------------------------------------------


def _fmt(entry: dict[str, Any], metric: str, scale: float, decimals: int) -> str:
    if metric not in entry:
        return "–"
    mean, std, count = entry[metric]
    if count > 1:
        return f"{mean * scale:.{decimals}f} ± {std * scale:.{decimals}f}"
    return f"{mean * scale:.{decimals}f}"


def _columns() -> list[tuple[str, str, float, int]]:
    spec = {m[0]: m for m in METRICS}
    columns = []
    for metric in TABLE_METRICS:
        if metric == "speedup":
            columns.append(("speedup", "× faster than retrain", 1, 0))
        else:
            _, label, scale, decimals, _ = spec[metric]
            columns.append((metric, label, scale, decimals))
    return columns


def results_tables(summary) -> str:
    """One Markdown table per setting: method rows, mean ± std over seeds."""
    settings: dict[tuple, list] = {}
    for key, entry in summary.items():
        settings.setdefault(key[:5], []).append((key[5], key[6], entry))
    columns = _columns()
    out = []
    for (dataset, channel, family, snr_db, edr), members in settings.items():
        out.append(f"#### {dataset}, {channel} ({family}) at {snr_db:g} dB, EDR {100 * edr:g} %\n")
        out.append("| method | seeds | " + " | ".join(c[1] for c in columns) + " |")
        out.append("|---|---|" + "---|" * len(columns))
        for beta_u, method, entry in members:
            name = method if beta_u is None else f"{method} (β_u {beta_u:g})"
            seeds = f"{entry['seeds']}" + (f" (+{entry['diverged']} diverged)" if entry["diverged"] else "")
            out.append(f"| {name} | {seeds} | " + " | ".join(_fmt(entry, *c[0:1], *c[2:]) for c in columns) + " |")
            for other in ("own", "original"):
                readings = {c[0]: entry[f"{other}_receiver_{c[0]}"] for c in columns
                            if f"{other}_receiver_{c[0]}" in entry}
                if readings:
                    out.append(f"| {name} ({other} receiver) | {seeds} | "
                               + " | ".join(_fmt(readings, *c[0:1], *c[2:]) for c in columns) + " |")
        out.append("")
    return "\n".join(out)


def paper_comparison(summary, bases: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """Ours beside the published numbers wherever the setting matches (dataset, AWGN paper family,
    the paper's SNR, a published EDR, the base β_u); and the gaps worth explaining."""
    lines, gaps = [], []
    for key, entry in summary.items():
        dataset, channel, family, snr_db, edr, beta_u, method = key
        if dataset not in PAPER_SETTINGS or family != "paper":
            continue
        if bases[dataset]["max_train_examples"]:  # a cut-down (smoke) system: not the paper's
            continue
        paper_name, settings = PAPER_SETTINGS[dataset]
        if (channel, snr_db) not in settings or method not in PAPER[paper_name]:
            continue
        if beta_u is not None and beta_u != bases[dataset]["unlearning"]["beta_u"]:
            continue
        matches = [i for i, e in enumerate(PAPER_EDRS) if abs(e - edr) < 1e-9]
        if not matches:
            continue
        published = PAPER[paper_name][method]
        cells = []
        for metric, label, scale, decimals in PAPER_COLUMNS:
            theirs = published[metric][matches[0]]
            ours = _fmt(entry, metric, scale, decimals)
            cells.append(f"{ours} / {theirs:.{decimals}f}")
            if metric in entry:
                mine = entry[metric][0] * scale
                relative = abs(mine - theirs) / max(abs(theirs), 1e-9)
                if (scale == 100 and abs(mine - theirs) > 5) or (scale == 1 and relative > 0.25):
                    gaps.append({"dataset": dataset, "method": method, "metric": metric,
                                 "label": label, "edr": edr, "ours": mine, "paper": theirs,
                                 "decimals": decimals})
        lines.append(f"| {dataset} | {100 * edr:g} % | {channel} {snr_db:g} dB | {method} | "
                     + " | ".join(cells) + " |")
    if not lines:
        return "", gaps
    header = ("| dataset | EDR | channel | method | " + " | ".join(f"{c[1]} ours / paper" for c in PAPER_COLUMNS)
              + " |\n|---|---|---|---|" + "---|" * len(PAPER_COLUMNS) + "\n")
    return header + "\n".join(lines) + "\n", gaps


# The gradient-ascent baselines wreck the decoder under either protocol.
_COLLAPSE = {
    ("hbu", "accuracy_clean"): "Hessian-scaled ascent collapses the decoder, as in 4 of the "
    "paper's 5 EDRs",
    ("vbu", "mse_clean"): "the collapsed decoder; the paper's own VBU/HBU values span 6.7–285",
    ("hbu", "mse_clean"): "the collapsed decoder; the paper's own VBU/HBU values span 6.7–285",
    ("vbu", "mse_erased"): "the collapsed decoder, as for MSE clean",
    ("hbu", "mse_erased"): "the collapsed decoder, as for MSE clean",
}

# Why a published number and ours differ, by (method, metric); "*" matches any method.
REASONS = {
    **_COLLAPSE,
    ("original", "accuracy_clean"): "per-element channel noise at 5 dB (below): the decoder blurs "
    "clean 1s; the SNR sweep shows the published level from 20 dB",
    ("*", "mse_clean"): "per-element channel noise (below): every latent element is received at "
    "an SNR of 3.2; at 25 dB (full budget, seed 0) our original's MSE clean is 3.0",
    ("*", "mse_erased"): "per-element channel noise, as for MSE clean",
    ("original", "backdoor_accuracy"): "a small D_e (the embedded MNIST: 80 images at EDR 2 %, "
    "400 at 10 %) plants a weaker backdoor through a noisy channel",
    ("scu", "backdoor_accuracy"): "our stop rule re-evaluates D_e and stops right under 10 %; "
    "the reference's noisy in-epoch estimate overshot",
    ("scu", "accuracy_clean"): "per-element channel noise at 5 dB, as for the original",
    ("vbu", "accuracy_clean"): "gradient ascent with no compensation collapses the decoder; where "
    "it stops decides how far (the paper's own values range from 0.8 to 76.7 %)",
    ("vbu", "backdoor_accuracy"): "the ascent stops at the first epoch below 10 %",
    ("hbu", "backdoor_accuracy"): "the ascent stops at the first epoch below 10 %",
}


# Why, under the authors' own protocol (`reference`), a published number and ours still differ.
REFERENCE_REASONS = {
    **_COLLAPSE,
    ("vbu", "accuracy_clean"): "gradient ascent with no compensation, 20 epochs with no stop, "
    "collapses the decoder; the paper's own values range from 0.8 to 76.7 %",
    ("vbu", "backdoor_accuracy"): "the collapsed decoder outputs one image whatever it is sent, "
    "which the receiver reads as a single class (the target for some seeds, another for the "
    "rest): the number says nothing about forgetting. The paper's VBU times (0.1–0.7 s against "
    "SCU's 1.5–2.5 s) suggest its published run stopped early, which the shipped script does not",
    ("scu", "backdoor_accuracy"): "20 epochs' worth of steps with no stop drive the backdoor to ~0 "
    "on the embedded data; the authors' own script does the same on it (README, 'Reproducing the "
    "authors' numbers': 0.5 ± 0.2 %)",
    ("original", "backdoor_accuracy"): "a small D_e (the embedded MNIST: 80 images at EDR 2 %) "
    "plants a weaker backdoor",
    ("*", "mse_erased"): "240 erased images in 4,000 (not 3,600 in 60,000): SCU's 4,500 ascent "
    "steps revisit each erased image 300 times instead of 20",
}


def gap_lines(gaps: Sequence[dict[str, Any]], bases: dict[str, Any] | None = None) -> list[str]:
    """One line per (dataset, method, metric): the range of ours and the paper's over the EDRs
    where they differ, and the reason (for the protocol of the dataset's base in `bases`)."""
    grouped: dict[tuple, list[dict[str, Any]]] = {}
    for gap in gaps:
        grouped.setdefault((gap["dataset"], gap["method"], gap["metric"]), []).append(gap)
    lines = []
    for (dataset, method, metric), members in grouped.items():
        d = members[0]["decimals"]
        ours = [g["ours"] for g in members]
        theirs = [g["paper"] for g in members]
        edrs = ", ".join(f"{100 * g['edr']:g}" for g in members)
        scalar = bool(bases) and bases.get(dataset, {}).get("channel", {}).get("draw") == "scalar"
        reasons = REFERENCE_REASONS if scalar else REASONS
        reason = reasons.get((method, metric)) or reasons.get(("*", metric), "")

        def span(values):
            low, high = f"{min(values):.{d}f}", f"{max(values):.{d}f}"
            return low if low == high else f"{low}–{high}"

        lines.append(f"* {dataset} · {method} · {members[0]['label']}: ours {span(ours)}, paper "
                     f"{span(theirs)} (EDR {edrs} %)" + (f" — {reason}." if reason else "."))
    return lines


ELEMENT_DRAW = """\
* **Channel noise per latent element.** Our AWGN (paper family) draws independent noise for every
  latent element, as the channel model says; the authors' code drew one noise scalar per batch,
  which shifts the whole latent and is much easier to decode. At 5 dB our original system's
  accuracy on D_clean is therefore far below the published ~97 %; the SNR sweep shows where it
  reaches the published level (20 dB and above on the embedded MNIST). The `reference` variant
  (`--config=configs/experiments/edr_sweep.py:reference`) runs the authors' protocol instead.
* **Stopping rule and learning rate.** SCU stops when a re-evaluation of D_e (8 channel draws per
  image) is below 10 % (`stop_on="eval"`), at lr 3e-4; the reference stopped on its noisy in-epoch
  estimate at lr 1e-4 and so overshot to ~7 %. Our SCU therefore ends just under 10 %.
"""
SCALAR_DRAW = """\
* **The authors' protocol** (`reference`): one noise scalar per channel call, its std detached;
  MNIST trained and unlearned through Rician K = 2 at 6 dB and evaluated without the channel;
  SCU and VBU run 20 epochs' worth of steps with no early stop at lr 1e-4; a fresh Adam every
  training epoch (`scu_jax.presets.use_reference_protocol` lists every field). The published MNIST
  table equals the AWGN 5 dB column of their SNR sweep, one channel setting away from the script;
  the comparison above is against it.
"""
DIFFERENCES = """\
* **The embedded MNIST has 5,000 images** (4,000 train / 1,000 test; `mnist5k`), not 60,000: D_e
  holds 80–400 images instead of 1,200–6,000, so one erased image moves the backdoor accuracy by
  0.25–1.25 points. The training step budget is matched (300 + 150 epochs on 4,000 images equal the
  paper's 20 + 10 on 60,000), and the SNR sweep trains a third of it (stated in its config).
* **One receiver reads every row**: the original system's (retraining's own receiver, trained on
  D_r, is the extra row `retrain (own receiver)`), unless a base says `evaluation.receiver = own`.
* **Times are measured wall time** on the machine below, compilation excluded and reported apart;
  the paper's times are synthetic (batches × a constant, on a GPU).
* **MSE is the per-image sum of squared errors**, as in the reference; PSNR/SSIM come from dm-pix.
"""


def _base_summary(bases: dict[str, Any]) -> str:
    rows = ["| dataset | model | channel (base) | noise draw | evaluated | receiver | "
            "train epochs (+ receiver) | lr | batch | "
            "unlearning lr | β_u | λ_kl | ρ | max epochs | eval draws | MINE steps |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for dataset, b in bases.items():
        evaluation = b["evaluation"]
        rows.append(
            f"| {dataset} | {b['model']['name']} (d={b['model']['latent_dim']}) | "
            f"{b['channel']['name']} {b['channel']['family']} {b['channel']['snr_db']:g} dB | "
            f"{b['channel'].get('draw', 'element')} | "
            f"{'without the channel' if evaluation.get('channel') == 'none' else 'through it'} | "
            f"{evaluation.get('receiver', 'original')} | "
            f"{b['train']['epochs']} (+{b['train']['receiver_epochs']}) | {b['train']['learning_rate']:g} | "
            f"{b['train']['batch_size']} | {b['unlearning']['learning_rate']:g} | "
            f"{b['unlearning']['beta_u']:g} | {b['unlearning']['lambda_kl']:g} | "
            f"{b['unlearning']['rho']:g} | {b['unlearning']['max_epochs']} | {b['eval_draws']} | "
            f"{b['evaluation']['mi_steps']} |")
    return "\n".join(rows) + "\n"


def write_report(workdir: str | os.PathLike) -> str:
    """Writes WORKDIR/figures and WORKDIR/REPORT.md from the finished rows; returns the report path."""
    root = pathlib.Path(workdir)
    experiment_file = root / EXPERIMENT_FILE
    if not experiment_file.exists():
        raise FileNotFoundError(f"--workdir={root} holds no {EXPERIMENT_FILE}: not an scu-experiment "
                                "directory")
    try:
        experiment = json.loads(experiment_file.read_text())
    except ValueError:
        raise ValueError(f"{experiment_file} is not valid JSON") from None
    config = experiment["config"]
    rows = with_speedups(read_rows(root))
    summary = aggregate(rows)
    figures_dir = root / FIGURES_DIR
    figures_dir.mkdir(exist_ok=True)
    figures = axis_figures(summary, figures_dir) + time_figure(rows, figures_dir)
    figures += sample_figures(rows, root, figures_dir, config["bases"])

    runs = experiment.get("runs", [])
    machine = runs[-1]["machine"] if runs else {}
    total = sum(run["seconds"] or 0.0 for run in runs)
    grid = config["grid"]
    out = [f"# Experiment `{config['name']}`\n",
           f"Written by `scu-report` on {datetime.date.today().isoformat()} from `{root}`: "
           f"{len(rows)} finished cells "
           f"({sum(1 for r in rows if r.get('status') != 'ok')} diverged).\n",
           "## Configuration\n",
           "Grid: " + "; ".join(f"{k} = {', '.join(str(v) for v in grid[k]) or '(base)'}"
                                for k in ("channels", "families", "snr_db", "edr", "beta_u",
                                          "methods", "seeds")) + ".\n",
           "Base systems (one per dataset; every cell changes only its grid fields):\n",
           _base_summary(config["bases"]),
           "<details><summary>Full experiment config (JSON)</summary>\n\n```json\n"
           + json.dumps(config, indent=1, sort_keys=True) + "\n```\n</details>\n",
           "## Machine and time\n",
           f"* CPU: {machine.get('cpu', '?')} ({machine.get('cpu_count', '?')} cores); platform "
           f"{machine.get('platform', '?')}; Python {machine.get('python', '?')}; JAX "
           f"{machine.get('jax', '?')} on {machine.get('backend', '?')} "
           f"({', '.join(machine.get('devices', []))}).",
           f"* {len(runs)} run(s) of the command, {total / 60:.1f} min of wall time in all: "
           + ", ".join(f"{run['cells_run']} cells in {(run['seconds'] or 0) / 60:.1f} min "
                       f"({run['workers']} workers)" for run in runs) + ".\n",
           "## Results (mean ± std over seeds)\n",
           "Backdoor accuracy: the fraction of the erased images x̂(D_e) the receiver labels as the "
           "backdoor target (lower = forgotten). Times are wall time without compilation; "
           "× faster is per seed against that seed's retraining.\n",
           results_tables(summary)]
    comparison, gaps = paper_comparison(summary, config["bases"])
    out.append("## Beside the published numbers (spec §7)\n")
    if comparison:
        out.append("Ours (mean ± std over seeds) / the authors' published value, where dataset, "
                   "channel, SNR, EDR and β_u match the paper's setting.\n")
        out.append(comparison)
    else:
        out.append("No cell of this experiment is in a published setting (MNIST or CIFAR-10 with "
                   "all training images, AWGN paper family at the paper's SNR, EDR 2–10 %).\n")
    out.append("### Where our numbers differ, and why\n")
    if gaps:
        out.append("Gaps over 5 points (accuracies) or 25 % (MSE), and why:\n")
        out.extend(gap_lines(gaps, config["bases"]))
        out.append("")
    draws = {base["channel"].get("draw", "element") for base in config["bases"].values()}
    out.append(("" if "element" not in draws else ELEMENT_DRAW)
               + ("" if "scalar" not in draws else SCALAR_DRAW) + DIFFERENCES)
    for dataset, base in config["bases"].items():
        epochs = (base["train"]["epochs"], base["train"]["receiver_epochs"])
        if dataset == "mnist5k" and epochs < (300, 150) and not base["max_train_examples"]:
            share = (epochs[0] + epochs[1]) / 450
            out.append(f"* **Shorter training here.** This experiment trains its mnist5k systems for "
                       f"{epochs[0]} + {epochs[1]} epochs, {100 * share:.0f} % of the paper's step "
                       "budget that the main job matches, so its original systems are weaker "
                       "(lower accuracy, weaker backdoor) than the main job's at the same setting.\n")
    out.append("MINE estimates (`mi_mine_erased` in results.csv and its figure) are not in the "
               "tables: on a few hundred erased images of 784 pixels the critic over-fits and the "
               "held-out estimate swings by tens of nats, even below zero; the variational upper "
               "bound E KL(q(z|x) ‖ N(0, I)) is shown instead.\n")
    out.append("## Figures\n")
    for name in figures:
        if name.endswith(".png"):
            out.append(f"![{name[:-4]}]({FIGURES_DIR}/{name})\n")
    path = root / REPORT_FILE
    tmp = root / f".{REPORT_FILE}.tmp"
    tmp.write_text("\n".join(out))
    os.replace(tmp, path)
    return str(path)

"""The probes of what crosses the channel (`scu_jax.probes`) over a comparison's systems: each
probe's gap closed per system, which probes tell the original from retraining, a verdict per
system, their Markdown tables and the figure (gap closed against SNR). Used by `scu-pipeline`
(probes.json, probes.png and a section of comparison.md) and `scu-report` (a section of
REPORT.md); reads statistics of results, no JAX work.
"""

from __future__ import annotations

import math
import pathlib
from typing import Any, Mapping

import numpy as np

from scu_jax.experiments.aggregate import statistics, table_lines
from scu_jax.experiments.figures import _save, plt
from scu_jax.experiments.grid import ORIGINAL
from scu_jax.probes import PROBES, gap_closed, probe_keys, separates, verdict

SECTION = "## Is it gone? Probes of what crosses the channel\n"
NOTE = """\
Gap closed = (original − system) / (original − retraining), per probe, on the means over seeds: 1
is as gone as retraining, 0 as present as before (above 1: moved further than retraining). A probe
counts only where it tells the original from retraining (difference ≥ 0.02 and ≥ 3 standard
errors, each number's noise floor); the others are listed as not separating. Verdict: *hidden, not
erased* where the receiver's gap closed is ≥ 0.9 and a separating probe's is ≤ 0.5.
"""


def _mean_se(entry: Mapping[str, Any], key: str) -> tuple[float, float] | None:
    """A statistic's mean over seeds and its standard error: the seeds' spread and each seed's
    own noise floor (`<key>_se`, a rate's binomial error where the result has none)."""
    if key not in entry:
        return None
    mean, std, count = entry[key]
    own = entry.get(f"{key}_se", (None,))[0]
    if own is None and "num_erased" in entry:  # a receiver rate on D_e
        own = math.sqrt(max(mean * (1 - mean), 1e-12) / max(entry["num_erased"][0], 1))
    return mean, math.sqrt((std ** 2 + (own or 0.0) ** 2) / max(count, 1))


def _order(key: str) -> tuple:
    """Probes in `PROBES` order, each's z first and then its SNRs rising; CKA last."""
    for index, probe in enumerate(PROBES):
        snr = _feature_snr(key, probe) if key.startswith(f"probe_{probe}_") else None
        if snr is not None:
            return (index, -math.inf if math.isinf(snr) else snr, key)
    return (len(PROBES), 0.0, key)


def probe_summary(entries: Mapping[str, Mapping[str, Any]]) -> dict[str, Any] | None:
    """Gap closed and verdicts of every system of one comparison.

    Args:
      entries: system label → `aggregate.statistics` of its results over seeds (metric →
        (mean, std, count)); "original" and "retrain" are the references.

    Returns:
      None where the references or the probes are missing; else `{"receiver": metric, "probes":
      {key: {"original", "retrain", "separates"}}, "systems": {label: {"receiver_gap_closed",
      "gap_closed": {key: value}, "weakest", "verdict"}}}` (gap closed of the separating probes).
    """
    original, retrain = entries.get(ORIGINAL), entries.get("retrain")
    if original is None or retrain is None:
        return None
    keys = sorted((k for k in probe_keys(original) if k in retrain), key=_order)
    if not keys:
        return None
    receiver = "backdoor_accuracy" if "backdoor_accuracy" in original else "accuracy_erased"
    probes, usable = {}, []
    for key in [receiver, *keys]:
        (o, o_se), (r, r_se) = _mean_se(original, key), _mean_se(retrain, key)
        probes[key] = {"original": o, "retrain": r, "separates": separates(o, r, o_se, r_se)}
        if key != receiver and probes[key]["separates"]:
            usable.append(key)
    systems = {}
    for label, entry in entries.items():
        if not any(k in entry for k in keys):
            continue  # a row of another receiver: the same system's probes are its own row's
        gap = {k: gap_closed(entry[k][0], probes[k]["original"], probes[k]["retrain"])
               for k in usable if k in entry}
        receiver_gap = (gap_closed(entry[receiver][0], probes[receiver]["original"],
                                   probes[receiver]["retrain"])
                        if probes[receiver]["separates"] and receiver in entry else float("nan"))
        weakest = min(gap, key=gap.get) if gap else None
        systems[label] = {"receiver_gap_closed": receiver_gap, "gap_closed": gap,
                          "weakest": weakest, "verdict": verdict(receiver_gap, gap)}
    return {"receiver": receiver, "probes": {k: v for k, v in probes.items() if k != receiver},
            "receiver_separates": probes[receiver]["separates"], "systems": systems}


def _number(value: float | None, decimals: int = 2) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{decimals}f}"


def probe_lines(summary: Mapping[str, Any]) -> list[str]:
    """The verdict table (one row per system) and the probe table (one row per probe: its
    original and retrained values, whether it separates them, each system's gap closed)."""
    systems = summary["systems"]
    out = ["| system | receiver gap closed | weakest probe | its gap closed | verdict |",
           "|---|---|---|---|---|"]
    for label, entry in systems.items():
        weakest = entry["weakest"]
        out.append(f"| {label} | {_number(entry['receiver_gap_closed'])} | "
                   f"{weakest[len('probe_'):] if weakest else '–'} | "
                   f"{_number(entry['gap_closed'].get(weakest)) if weakest else '–'} | "
                   f"{entry['verdict']} |")
    if not summary["receiver_separates"]:
        out.append(f"\n(The receiver's {summary['receiver']} does not tell the original from "
                   "retraining here: no verdict.)")
    rows = []
    for key, probe in summary["probes"].items():
        rows.append([key[len("probe_"):], _number(probe["original"], 3),
                     _number(probe["retrain"], 3), "yes" if probe["separates"] else "**no**",
                     *(_number(systems[s]["gap_closed"].get(key)) for s in systems)])
    out += ["", "Gap closed per probe and system:", "",
            *table_lines(["probe", "original's value", "retraining's value", "separates",
                          *systems], rows), ""]
    return out


def _feature_snr(key: str, probe: str) -> float | None:
    """The SNR of a `probe_<probe>_y<snr>dB` key; +inf for `_z` (no channel), None otherwise."""
    feature = key[len(f"probe_{probe}_"):]
    if feature == "z":
        return math.inf
    if feature.startswith("y") and feature.endswith("dB"):
        return float(feature[1:-2])
    return None


def probe_figure(summary: Mapping[str, Any], directory: pathlib.Path, stem: str,
                 title: str = "") -> list[str]:
    """Gap closed against the probed SNR (z, the latent before the channel, at the right), a
    panel per probe kind, a line per system; probes that do not separate the original from
    retraining are left out of the lines (and named in the panel)."""
    figure, axes = plt.subplots(1, len(PROBES), figsize=(4.2 * len(PROBES), 3.4), squeeze=False)
    labels = [s for s in summary["systems"] if s not in (ORIGINAL, "retrain")]
    for ax, probe in zip(axes[0], PROBES):
        keys = [k for k in summary["probes"] if _feature_snr(k, probe) is not None
                and k.startswith(f"probe_{probe}_")]
        snrs = [_feature_snr(k, probe) for k in keys]
        finite = [s for s in snrs if math.isfinite(s)]
        z_at = (max(finite) + 10) if finite else 0.0
        xs = [z_at if not math.isfinite(s) else s for s in snrs]
        order = np.argsort(xs, kind="stable")  # left to right: the SNRs rising, then z
        keys, snrs, xs = ([seq[i] for i in order] for seq in (keys, snrs, xs))
        for index, label in enumerate(labels):
            gap = summary["systems"][label]["gap_closed"]
            ys = [gap.get(k, np.nan) for k in keys]
            ax.plot(xs, ys, marker="o", ms=3, label=label, color=f"C{index % 10}")
        ax.axhline(1.0, color="grey", ls="--", lw=0.8)
        ax.axhline(0.0, color="black", ls="--", lw=0.8)
        ax.set_xticks(xs, [("z" if not math.isfinite(s) else f"{s:g}") for s in snrs])
        blind = [k for k in keys if not summary["probes"][k]["separates"]]
        ax.set_title(f"{probe}" + (f" ({len(blind)} of {len(keys)} do not separate)"
                                   if blind else ""), fontsize=9)
        ax.set_xlabel("probed SNR of y (dB); z: before the channel")
        ax.set_ylabel("gap closed (1: as retraining)")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return _save(figure, directory, stem)


def comparison_probes(rows: Mapping[str, list[dict[str, Any]]], directory: pathlib.Path,
                      stem: str = "probes") -> tuple[dict[str, Any] | None, list[str]]:
    """`scu-pipeline`'s probes: the summary of its rows (system label → one result per seed) and
    its Markdown section, with the figure written to `directory/<stem>.png|pdf` (nothing where
    the results carry no probes or no original and retraining)."""
    summary = probe_summary({label: statistics(results) for label, results in rows.items()})
    if summary is None:
        return None, []
    probe_figure(summary, directory, stem)
    return summary, [SECTION, NOTE, *probe_lines(summary), f"![probes]({stem}.png)\n"]


def report_probes(summary: Mapping[tuple, Mapping[str, Any]], directory: pathlib.Path
                  ) -> tuple[list[str], list[str]]:
    """`scu-report`'s probes section (empty where no cell carries probes) and the figures it
    wrote to `directory`, one per setting of the aggregated `summary` (`aggregate.aggregate`)."""
    settings: dict[tuple, dict[str, Any]] = {}
    for key, entry in summary.items():
        label = key[-1] if key[5] is None else f"{key[-1]} (β_u {key[5]:g})"
        settings.setdefault(key[:5] + key[6:7], {})[label] = entry
    lines, figures = [], []
    for index, (setting, entries) in enumerate(settings.items()):
        probes = probe_summary(entries)
        if probes is None:
            continue
        dataset, channel, family, snr_db, edr, known = setting
        title = (f"{dataset}, {channel} ({family}) at {snr_db:g} dB, EDR {100 * edr:g} %"
                 + ("" if known is None else f", {100 * known:g} % of D_e known"))
        lines += [f"#### {title}\n", *probe_lines(probes)]
        figures += probe_figure(probes, directory, f"probes_{index}", title)
    return ([SECTION, NOTE, *lines] if lines else []), figures

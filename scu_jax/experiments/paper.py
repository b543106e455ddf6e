"""Ours beside the paper's published numbers, and why they differ.

The numbers are data (`paper_numbers.toml`, shipped with the package); the reasons for each gap
are prose, kept here beside the code that finds the gaps.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import tomllib
from typing import Any, Sequence

from scu_jax.experiments.aggregate import format_statistic, table_lines

NUMBERS_FILE = "paper_numbers.toml"
# (metric, label, scale, decimals) of the compared columns.
PAPER_COLUMNS = (("accuracy_clean", "acc clean %", 100, 1),
                 ("backdoor_accuracy", "backdoor %", 100, 1),
                 ("mse_clean", "MSE clean", 1, 2), ("mse_erased", "MSE erased", 1, 2))


@dataclasses.dataclass(frozen=True)
class PaperNumbers:
    """The published EDR tables.

    Attributes:
      edrs: the tables' erased data ratios, one per column.
      settings: our dataset → (the paper's dataset, the (channel, SNR dB) settings its table
        was measured in).
      tables: paper dataset → method → metric → one value per EDR (accuracies in %).
    """

    edrs: tuple[float, ...]
    settings: dict[str, tuple[str, tuple[tuple[str, float], ...]]]
    tables: dict[str, dict[str, dict[str, tuple[float, ...]]]]


@functools.cache
def paper_numbers() -> PaperNumbers:
    """The published numbers, read from the package's `paper_numbers.toml`."""
    text = importlib.resources.files(__package__).joinpath(NUMBERS_FILE).read_text("utf-8")
    data = tomllib.loads(text)
    settings = {dataset: (entry["paper"], tuple((c["channel"], float(c["snr_db"]))
                                                for c in entry["channels"]))
                for dataset, entry in data["settings"].items()}
    tables = {paper: {method: {metric: tuple(float(v) for v in values)
                               for metric, values in metrics.items()}
                      for method, metrics in methods.items()}
              for paper, methods in data["tables"].items()}
    return PaperNumbers(tuple(float(e) for e in data["edrs"]), settings, tables)


def _published(key: tuple, bases: dict[str, Any]) -> dict[str, float] | None:
    """The published values (metric → value) of a summary key's setting, or None where the
    paper has no table for it: dataset, channel and SNR, AWGN paper family, a published EDR, the
    base's β_u, and a system with all the training images."""
    dataset, channel, family, snr_db, edr, beta_u, known_fraction, method = key
    numbers = paper_numbers()
    if dataset not in numbers.settings or family != "paper":
        return None
    if bases[dataset]["max_train_examples"]:  # a cut-down (smoke) system: not the paper's
        return None
    paper_name, settings = numbers.settings[dataset]
    if (channel, snr_db) not in settings or method not in numbers.tables[paper_name]:
        return None
    if beta_u is not None and beta_u != bases[dataset]["unlearning"]["beta_u"]:
        return None
    if known_fraction not in (None, 1.0):  # the paper's methods know all of D_e
        return None
    matches = [i for i, e in enumerate(numbers.edrs) if abs(e - edr) < 1e-9]
    if not matches:
        return None
    return {metric: values[matches[0]]
            for metric, values in numbers.tables[paper_name][method].items()}


def _is_gap(ours: float, theirs: float, scale: float) -> bool:
    """Worth explaining: over 5 points for an accuracy, over 25 % for an MSE."""
    if scale == 100:
        return abs(ours - theirs) > 5
    return abs(ours - theirs) / max(abs(theirs), 1e-9) > 0.25


def paper_comparison(summary, bases: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """Ours beside the published numbers wherever the setting matches (dataset, AWGN paper family,
    the paper's SNR, a published EDR, the base β_u); and the gaps worth explaining."""
    rows, gaps = [], []
    for key, entry in summary.items():
        published = _published(key, bases)
        if published is None:
            continue
        dataset, channel, _, snr_db, edr, _, _, method = key
        cells = []
        for metric, label, scale, decimals in PAPER_COLUMNS:
            theirs = published[metric]
            ours = format_statistic(entry.get(metric), scale, decimals)
            cells.append(f"{ours} / {theirs:.{decimals}f}")
            if metric in entry and _is_gap(entry[metric][0] * scale, theirs, scale):
                gaps.append({"dataset": dataset, "method": method, "metric": metric,
                             "label": label, "edr": edr, "ours": entry[metric][0] * scale,
                             "paper": theirs, "decimals": decimals})
        rows.append([dataset, f"{100 * edr:g} %", f"{channel} {snr_db:g} dB", method, *cells])
    if not rows:
        return "", gaps
    header = ["dataset", "EDR", "channel", "method",
              *(f"{label} ours / paper" for _, label, _, _ in PAPER_COLUMNS)]
    return "\n".join(table_lines(header, rows)) + "\n", gaps


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
    "on the embedded data; the authors' own script does the same on it (docs/reproducing.md: "
    "0.5 ± 0.2 %)",
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

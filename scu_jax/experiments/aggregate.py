"""Rows → statistics over seeds, and their Markdown: what the sweep report and the main job's
comparison table share.

A row is one system's results (a sweep cell's, or one seed of one method in the main job); a row
with a `status` other than "ok" diverged and is counted apart, never averaged.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np

from scu_jax.evaluation import FORGET_RECEIVER_METRICS, RECEIVER_METRICS
from scu_jax.experiments.grid import ORIGINAL

METHOD_ORDER = (ORIGINAL, "retrain", "scu", "scu_no_cc", "vbu", "hbu", "finetune", "ssd", "l1_sparse",
                "salun")
SETTING_FIELDS = ("dataset", "channel", "family", "snr_db", "edr", "beta_u", "known_fraction")
# A statistic: (mean, std, number of values).
Statistic = tuple[float, float, int]


def finished(row: dict[str, Any]) -> bool:
    """Whether a row holds results (a run that diverged holds only its error)."""
    return row.get("status", "ok") == "ok"


def method_order(method: str) -> int:
    return METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)


def with_speedups(rows: Sequence[dict[str, Any]], *, pair_by: str = "group",
                  reference_too: bool = False) -> list[dict[str, Any]]:
    """The rows, each with `speedup` = retraining's time / its own, retraining's row of the same
    `pair_by` value (the same original system) and known fraction giving the time;
    `reference_too` gives retraining itself its speed-up of 1."""
    def pair(row):
        return row.get(pair_by), row.get("known_fraction")

    retrain = {pair(row): row["unlearn_seconds"] for row in rows
               if row["method"] == "retrain" and finished(row) and "unlearn_seconds" in row}
    skipped = (ORIGINAL,) if reference_too else (ORIGINAL, "retrain")
    out = []
    for row in rows:
        row = dict(row)
        seconds = row.get("unlearn_seconds")
        if pair(row) in retrain and seconds and row["method"] not in skipped:
            row["speedup"] = retrain[pair(row)] / seconds
        out.append(row)
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def statistics(members: Sequence[dict[str, Any]],
               metrics: Iterable[str] | None = None) -> dict[str, Any]:
    """`{"seeds": finished rows, "diverged": the others, metric: (mean, std, count)}` over the
    finished rows, for `metrics` (default: every numeric field); non-finite values are left out."""
    ok = [row for row in members if finished(row)]
    entry: dict[str, Any] = {"seeds": len(ok), "diverged": len(members) - len(ok)}
    if metrics is None:
        metrics = {m for row in ok for m, v in row.items() if isinstance(v, (int, float))}
    for metric in metrics:
        values = [row[metric] for row in ok if _is_number(row.get(metric))]
        if values:
            entry[metric] = (float(np.mean(values)), float(np.std(values)), len(values))
    return entry


def aggregate(rows: Sequence[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    """`statistics` of every metric per (setting, method), in a stable order.

    Keys are `(dataset, channel, family, snr_db, edr, beta_u, known_fraction, method)`; a method
    without β_u has `beta_u` None, a sweep without the known-fraction axis `known_fraction` None.
    """
    buckets: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        key = tuple(row.get(field) for field in SETTING_FIELDS) + (row["method"],)
        buckets.setdefault(key, []).append(row)
    summary = {key: statistics(members) for key, members in buckets.items()}

    def order(item):
        key = item[0]
        setting = tuple((v is not None, v if v is not None else 0) for v in key[:5])
        return (setting, (key[6] is not None, key[6] or 0), method_order(key[-1]),
                (key[5] is not None, key[5] or 0))

    return dict(sorted(summary.items(), key=order))


def other_receiver_row(values: dict[str, Any]) -> dict[str, Any] | None:
    """The accuracies read by the receiver a table does not use (`own_receiver_*` or
    `original_receiver_*` fields of a result or of its statistics), as a row of their own with
    `receiver` naming it; None where the system's two receivers are the same."""
    metrics = (*RECEIVER_METRICS, *FORGET_RECEIVER_METRICS)
    for other in ("own", "original"):
        prefix = f"{other}_receiver_"
        if any(prefix + name in values for name in metrics):
            return {"receiver": other, **{name: values[prefix + name] for name in metrics
                                          if prefix + name in values}}
    return None


def format_statistic(statistic: Statistic | None, scale: float, decimals: int,
                     spread: bool | None = None) -> str:
    """`mean ± std` (scaled), the mean alone for one value (or `spread=False`), `–` for none."""
    if statistic is None:
        return "–"
    mean, std, count = statistic
    if spread if spread is not None else count > 1:
        return f"{mean * scale:.{decimals}f} ± {std * scale:.{decimals}f}"
    return f"{mean * scale:.{decimals}f}"


def table_lines(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """The lines of a Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cells) + " |" for cells in rows]

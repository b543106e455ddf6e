"""The results of an experiment: one row per finished cell in an append-only JSON-lines file,
and the same rows as CSV.

The scheduler alone appends (one process), each row fsync'ed, so a kill leaves at worst a cut
last line, which `read_rows` drops; a rerun skips every cell with a row.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import os
import pathlib
from typing import Any, Sequence

from scu_jax.experiments.grid import Cell
from scu_jax.experiments.workdir import CSV_FILE, ROWS_FILE
from scu_jax.runs.files import write_text_atomic

KEY_FIELDS = ("dataset", "channel", "family", "snr_db", "edr", "seed", "method", "beta_u")


def make_row(experiment: str, cell: Cell, output: dict[str, Any]) -> dict[str, Any]:
    """A finished cell's row: its identity and grid fields, what its task returned, and when."""
    return {"cell": cell.id, "group": cell.group.id, "experiment": experiment, **cell.fields(),
            **output,
            "finished_at": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}


def read_rows(workdir: str | os.PathLike, *, repair: bool = False) -> list[dict[str, Any]]:
    """The finished cells' rows. A last line cut by a kill (no newline, or not JSON) is dropped,
    and with `repair` removed from the file; a repeated cell keeps its first row."""
    path = pathlib.Path(workdir) / ROWS_FILE
    if not path.exists():
        return []
    lines = path.read_text().split("\n")
    complete, tail = lines[:-1], lines[-1]
    rows, seen, damaged = [], set(), bool(tail)
    for line in complete:
        try:
            row = json.loads(line)
        except ValueError:
            damaged = True
            continue
        if row.get("cell") in seen:
            damaged = True
            continue
        seen.add(row.get("cell"))
        rows.append(row)
    if damaged and repair:
        write_text_atomic(path, "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))
    return rows


def append_row(workdir: str | os.PathLike, row: dict[str, Any]) -> None:
    """Appends one row and waits until it is on disk."""
    with open(pathlib.Path(workdir) / ROWS_FILE, "a") as handle:
        handle.write(json.dumps(row, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def write_csv(workdir: str | os.PathLike, rows: Sequence[dict[str, Any]]) -> None:
    """All rows as CSV: the cell's key fields first, then every scalar result, sorted by name."""
    scalar = sorted({key for row in rows for key, value in row.items()
                     if key not in KEY_FIELDS and not isinstance(value, (dict, list))})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(KEY_FIELDS) + scalar, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: ("" if row.get(key) is None else row.get(key))
                         for key in list(KEY_FIELDS) + scalar})
    write_text_atomic(pathlib.Path(workdir) / CSV_FILE, buffer.getvalue())

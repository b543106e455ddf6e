"""The results of an experiment: one row per finished cell in an append-only JSON-lines file
(results.jsonl, or one per shard), and the same rows as CSV.

One process appends to each file (the scheduler of an unsharded run, or of one shard), each row
fsync'ed, so a kill leaves at worst a cut last line, which `read_rows` drops; a rerun skips every
cell with a row in any file.
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
from scu_jax.experiments.shards import Shard
from scu_jax.experiments.workdir import CSV_FILE, row_files, rows_file
from scu_jax.runs.files import write_text_atomic

KEY_FIELDS = ("dataset", "channel", "family", "snr_db", "edr", "seed", "method", "beta_u",
              "known_fraction")


def make_row(experiment: str, cell: Cell, output: dict[str, Any]) -> dict[str, Any]:
    """A finished cell's row: its identity and grid fields, what its task returned, and when."""
    return {"cell": cell.id, "group": cell.group.id, "experiment": experiment, **cell.fields(),
            **output,
            "finished_at": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}


def _read_file(path: pathlib.Path, repair: bool) -> list[dict[str, Any]]:
    """One rows file's rows: a last line cut by a kill (no newline, or not JSON) is dropped, and
    with `repair` removed from the file; a repeated cell keeps its first row."""
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


def read_rows(workdir: str | os.PathLike, *, repair: bool = False, shard: Shard | None = None,
              order: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The finished cells' rows, merged from results.jsonl and every shard's file.

    Args:
      workdir: the experiment directory.
      repair: remove a cut last line (or repeated cells) from the file `shard` writes (only the
        process that writes a file may repair it; the others' files are read as they are).
      shard: whose file `repair` is for (None: results.jsonl).
      order: cell ids in grid order; the rows follow it (those of cells not in it come after, in
        file order), so merged shards read as one unsharded `--workers=0` run. None: file order.

    Raises:
      ValueError: a cell with rows in two files (one line naming both).
    """
    root = pathlib.Path(workdir)
    rows, source = [], {}
    for path in row_files(root):
        for row in _read_file(path, repair and path.name == rows_file(shard)):
            if row.get("cell") in source:
                raise ValueError(f"cell {row.get('cell')} has rows in both {source[row['cell']]} "
                                 f"and {path}; delete one of the two lines")
            source[row.get("cell")] = path
            rows.append(row)
    if order is not None:
        position = {cell: index for index, cell in enumerate(order)}
        rows.sort(key=lambda row: position.get(row.get("cell"), len(position)))
    return rows


def append_row(workdir: str | os.PathLike, row: dict[str, Any], shard: Shard | None = None) -> None:
    """Appends one row to the file of `shard` (None: results.jsonl) and waits until it is on
    disk."""
    with open(pathlib.Path(workdir) / rows_file(shard), "a") as handle:
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

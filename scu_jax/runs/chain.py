"""The ledger's hash chain: each record names the sha256 of the line before it.

A record's `previous_sha256` is the sha256 of the previous line of ``ledger.jsonl`` exactly as it
was written (the init record's is null), so editing a record, removing one from the middle or
moving one breaks the chain at the next line. Records written before the chain existed (no
`previous_sha256`) may only open a ledger. The chain's head, the sha256 of the last line, names
the whole ledger as it stands: an auditor who keeps it can tell later that nothing before it has
changed. A chain is tamper-evident, not tamper-proof: whoever can rewrite every record and every
version's metadata can build another one, which a head kept elsewhere exposes.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from typing import Any, Sequence

from scu_jax.errors import LedgerMismatchError

FIELD = "previous_sha256"


def line_digest(line: str) -> str:
    """sha256 of one ledger line (its text, without the newline)."""
    return hashlib.sha256(line.encode()).hexdigest()


def line_of(record: dict[str, Any]) -> str:
    """A record as the ledger writes it: one line of sorted-key JSON."""
    return json.dumps(record, sort_keys=True)


def check(path: pathlib.Path, lines: Sequence[str], records: Sequence[dict[str, Any]]) -> None:
    """Raises `LedgerMismatchError` at the first record whose `previous_sha256` is not the
    sha256 of the line before it, or that drops the field after chained records."""
    chained = False
    for number, (line, record) in enumerate(zip(lines, records), 1):
        if FIELD not in record:
            if chained:
                raise LedgerMismatchError(f"{path}, line {number} has no {FIELD} after chained "
                                          "records: the ledger was edited")
            continue
        chained = True
        expected = line_digest(lines[number - 2]) if number > 1 else None
        if record[FIELD] != expected:
            raise LedgerMismatchError(
                f"{path}, line {number}: its {FIELD} is not the sha256 of line {number - 1}: the "
                "ledger was edited, reordered or cut" if number > 1 else
                f"{path}, line 1: the init record names a line before it")


def link(records: Sequence[dict[str, Any]], head: str | None) -> list[dict[str, Any]]:
    """`records` to append after a ledger whose last line's sha256 is `head` (None: an empty
    ledger), each with its `previous_sha256`."""
    linked = []
    for record in records:
        record = {**record, FIELD: head}
        linked.append(record)
        head = line_digest(line_of(record))
    return linked


def head_of(lines: Sequence[str]) -> str | None:
    """The chain's head: the sha256 of the last line (None for an empty ledger)."""
    return line_digest(lines[-1]) if lines else None

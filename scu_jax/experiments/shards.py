"""Shards of a sweep: which cells shard i of n runs, so that n machines share one workdir.

A shard owns whole groups (every cell that starts from the same original system), so the tasks
that write shared state — a group's training and its retraining, which the group's other cells
read — belong to exactly one shard; no two shards ever write the same directory. Groups go to
shards by cell count (largest first, each to the shard with the fewest cells, ties to the lowest
index), a function of the grid alone: every machine computes the same partition.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Mapping, Sequence

from scu_jax.experiments.grid import Cell, Group

_SHARD = re.compile(r"\s*(-?\d+)\s*/\s*(-?\d+)\s*")


@dataclasses.dataclass(frozen=True)
class Shard:
    """Shard `index` (0-based) of `count`."""

    index: int
    count: int

    def __post_init__(self):
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index}/{self.count}: needs 0 <= i < n")

    @property
    def name(self) -> str:
        """The shard in file names: `shard-i-of-n`."""
        return f"shard-{self.index}-of-{self.count}"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str, source: str = "--shard") -> Shard:
    """`i/n` as a `Shard`; anything else is a ValueError naming `source` and what is allowed."""
    match = _SHARD.fullmatch(text)
    if match:
        index, count = int(match.group(1)), int(match.group(2))
        if count >= 1 and 0 <= index < count:
            return Shard(index, count)
    raise ValueError(f"{source}={text!r}: must be i/n with integers 0 <= i < n (0-based: "
                     "--shard=0/4 .. --shard=3/4)")


def shard_from_environment(environ: Mapping[str, str]) -> Shard | None:
    """The shard of a SLURM array task: i = SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN (or the
    task id where no minimum is set), n = SLURM_ARRAY_TASK_COUNT; None outside an array job."""
    task_id, count = environ.get("SLURM_ARRAY_TASK_ID"), environ.get("SLURM_ARRAY_TASK_COUNT")
    if task_id is None or count is None:
        return None
    low = environ.get("SLURM_ARRAY_TASK_MIN")
    source = (f"SLURM_ARRAY_TASK_ID={task_id!r}, SLURM_ARRAY_TASK_COUNT={count!r}"
              + ("" if low is None else f", SLURM_ARRAY_TASK_MIN={low!r}"))
    try:
        index = int(task_id) - (0 if low is None else int(low))
        return Shard(index, int(count))
    except ValueError:
        raise ValueError(f"{source}: the shard i = TASK_ID - TASK_MIN and n = TASK_COUNT must be "
                         "integers with 0 <= i < n (an array of consecutive task ids, e.g. "
                         "--array=0-3)") from None


def partition(cells: Sequence[Cell], count: int) -> list[list[Cell]]:
    """The cells of each of `count` shards, whole groups each, every list in grid order."""
    groups: dict[Group, int] = {}
    for cell in cells:
        groups[cell.group] = groups.get(cell.group, 0) + 1
    sizes = [0] * count
    owner: dict[Group, int] = {}
    # Largest groups first (a stable sort keeps grid order among equals): balanced cell counts.
    for group, size in sorted(groups.items(), key=lambda item: -item[1]):
        shard = min(range(count), key=lambda index: (sizes[index], index))
        owner[group] = shard
        sizes[shard] += size
    shards: list[list[Cell]] = [[] for _ in range(count)]
    for cell in cells:
        shards[owner[cell.group]].append(cell)
    return shards


def shard_cells(cells: Sequence[Cell], shard: Shard | None) -> list[Cell]:
    """The cells `shard` runs (all of them without a shard)."""
    return list(cells) if shard is None else partition(cells, shard.count)[shard.index]

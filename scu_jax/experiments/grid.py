"""The grid of an experiment: its cells, their configs, validation and expansion.

A cell is one (dataset, channel, family, SNR, EDR, seed, method, β_u, known fraction). Every cell
of the same (dataset, channel, family, SNR, EDR, seed) — a group — starts from the same original
system, trained once; the known fraction (`forget.known_fraction`: the share of D_e the methods
are given) changes what is unlearned, not what was trained.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import ml_collections

from scu_jax import config as config_lib
from scu_jax.channels import CHANNELS, FAMILIES
from scu_jax.config import METHODS, check_field
from scu_jax.errors import ConfigError

EXPERIMENTS = ("edr_sweep", "snr_sweep", "beta_sweep", "known_sweep")
ORIGINAL = "original"  # the cell that evaluates the trained system itself
BETA_METHODS = ("scu", "scu_no_cc", "vbu")  # the methods whose loss has β_u


@dataclasses.dataclass(frozen=True)
class Group:
    """The cells that share one original system."""

    dataset: str
    channel: str
    family: str
    snr_db: float
    edr: float
    seed: int

    @property
    def id(self) -> str:
        return (f"{self.dataset}/{self.channel}-{self.family}_snr{self.snr_db:g}_edr{self.edr:g}"
                f"/seed_{self.seed}")


@dataclasses.dataclass(frozen=True)
class Cell:
    group: Group
    method: str
    beta_u: float | None  # None: the method has no β_u
    known_fraction: float | None = None  # None: not swept (the base's)

    @property
    def name(self) -> str:
        name = self.method if self.beta_u is None else f"{self.method}_bu{self.beta_u:g}"
        return name if self.known_fraction is None else f"{name}_known{self.known_fraction:g}"

    def retrain(self) -> "Cell":
        """The retraining this cell is measured against: same group, same known fraction."""
        return Cell(self.group, "retrain", None, self.known_fraction)

    @property
    def id(self) -> str:
        return f"{self.group.id}/{self.name}"

    def fields(self) -> dict[str, Any]:
        fields = {**dataclasses.asdict(self.group), "method": self.method, "beta_u": self.beta_u}
        if self.known_fraction is not None:  # rows of the other sweeps stay as they were
            fields["known_fraction"] = self.known_fraction
        return fields


def group_config(base: ml_collections.ConfigDict, group: Group) -> ml_collections.ConfigDict:
    """The training config of a group's original system: `base` at the group's grid values."""
    config = base.copy_and_resolve_references()
    config.channel.name, config.channel.family = group.channel, group.family
    config.channel.snr_db, config.erasure.edr, config.seed = group.snr_db, group.edr, group.seed
    return config


def cell_config(base: ml_collections.ConfigDict, cell: Cell) -> ml_collections.ConfigDict:
    """The config of one cell's run: its group's, with the cell's method and β_u."""
    config = group_config(base, cell.group)
    if cell.method != ORIGINAL:
        config.unlearning.method = cell.method
    if cell.beta_u is not None:
        config.unlearning.beta_u = cell.beta_u
    if cell.known_fraction is not None:
        config.forget.known_fraction = cell.known_fraction
    return config


def _numbers(values: Sequence[Any], low: float, high: float, *, low_open: bool = False) -> bool:
    def ok(value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if not math.isfinite(value):
            return False
        return (value > low if low_open else value >= low) and value <= high

    return all(ok(value) for value in values)


def _check_grid(grid: ml_collections.ConfigDict) -> None:
    for field, choices, may_be_empty in (("channels", CHANNELS, True), ("families", FAMILIES, True),
                                         ("methods", (ORIGINAL,) + METHODS, False)):
        values = tuple(grid[field])
        check_field((may_be_empty or len(values) > 0) and set(values) <= set(choices)
                    and len(set(values)) == len(values), f"grid.{field}", values,
                    f"must be distinct values from: {', '.join(choices)}"
                    + (" (or empty: the base's)" if may_be_empty else ""))
    check_field(_numbers(grid.snr_db, -50.0, 100.0), "grid.snr_db", tuple(grid.snr_db),
                "must be finite numbers in [-50, 100] dB (or empty: the base's)")
    check_field(_numbers(grid.edr, 0.0, 0.5, low_open=True), "grid.edr", tuple(grid.edr),
                "must be numbers in (0, 0.5] (or empty: the base's)")
    check_field(_numbers(grid.beta_u, 0.0, 1e6), "grid.beta_u", tuple(grid.beta_u),
                "must be numbers in [0, 1e6] (or empty: the base's)")
    known = tuple(grid.get("known_fraction", ()))
    check_field(_numbers(known, 0.0, 1.0, low_open=True) and len(set(known)) == len(known),
                "grid.known_fraction", known,
                "must be distinct numbers in (0, 1] (or empty: the base's)")
    seeds = tuple(grid.seeds)
    check_field(len(seeds) > 0 and len(set(seeds)) == len(seeds)
                and all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**31
                        for s in seeds),
                "grid.seeds", seeds, "must be distinct integers in [0, 2**31)")


def validate_experiment(config: ml_collections.ConfigDict) -> list[Cell]:
    """Checks the experiment config and every cell's system config; returns the cells in order.

    Raises `ConfigError` (one line naming the field, its value and what is allowed).
    """
    check_field(config.name in EXPERIMENTS, "name", config.name,
                f"must be one of: {', '.join(EXPERIMENTS)}")
    check_field(len(config.bases) > 0, "bases", dict(config.bases),
                "must name at least one dataset")
    _check_grid(config.grid)
    check_field(isinstance(config.get("runs_together", False), bool), "runs_together",
                config.get("runs_together"), "must be True or False")
    for dataset, base in config.bases.items():
        check_field(base.dataset == dataset, f"bases.{dataset}.dataset", base.dataset,
                    f"must be {dataset!r}, the name it is listed under")
        try:
            config_lib.validate_config(base)
        except ConfigError as error:
            message = str(error).replace("config.", f"config.bases.{dataset}.", 1)
            raise ConfigError(message) from None
        # The sweeps' axes (EDR), rows and figures are the paper's backdoor protocol's.
        check_field(base.forget.kind == "backdoor", f"bases.{dataset}.forget.kind",
                    base.forget.kind, "the sweeps run the paper's backdoor protocol; compare "
                    "methods on other forget sets with scu-pipeline or benchmarks/forgetting.py")
    cells = expand(config)
    for cell in cells:
        try:
            config_lib.validate_config(cell_config(config.bases[cell.group.dataset], cell))
        except ConfigError as error:
            raise ConfigError(f"cell {cell.id}: {error}") from None
    return cells


def expand(config: ml_collections.ConfigDict) -> list[Cell]:
    """Every cell of the grid, grouped by original system (retrain first within a group)."""
    grid = config.grid
    methods = sorted(grid.methods, key=lambda m: (m != "retrain", m == ORIGINAL))
    cells = []
    for dataset, base in config.bases.items():
        for channel in tuple(grid.channels) or (base.channel.name,):
            for family in tuple(grid.families) or (base.channel.family,):
                for snr_db in tuple(grid.snr_db) or (base.channel.snr_db,):
                    for edr in tuple(grid.edr) or (base.erasure.edr,):
                        for seed in grid.seeds:
                            group = Group(dataset, channel, family, float(snr_db), float(edr),
                                          int(seed))
                            cells += _group_cells(group, methods, grid, base)
    return cells


def _group_cells(group: Group, methods: Sequence[str], grid: ml_collections.ConfigDict,
                 base: ml_collections.ConfigDict) -> list[Cell]:
    """A group's cells: every known fraction (retrain first within each), method and β_u."""
    cells = []
    for known in tuple(grid.get("known_fraction", ())) or (None,):
        known = None if known is None else float(known)
        for method in methods:
            if method in BETA_METHODS:
                for beta_u in tuple(grid.beta_u) or (base.unlearning.beta_u,):
                    cells.append(Cell(group, method, float(beta_u), known))
            else:
                cells.append(Cell(group, method, None, known))
    return cells

"""The experiment grid: cell counts and order of the paper's sweeps, one-line validation errors."""

import pytest

from scu_jax.errors import ConfigError
from scu_jax.experiments.grid import validate_experiment
from scu_jax.experiments.sweeps import experiment_config


@pytest.mark.parametrize("name,arg,cells,groups", [
    ("edr_sweep", None, 5 * 3 * 10, 5 * 3),  # 5 EDRs × 3 seeds × (7 of the paper, 3 of the field)
    ("snr_sweep", None, 3 * 5 * 3 * 7, 3 * 5 * 3),  # 3 channels × 5 SNRs × 3 seeds
    ("beta_sweep", None, 3 * (2 + 3 * 5), 3),  # per seed: original, retrain, 3 methods × 5 β_u
    ("edr_sweep", "smoke", 2 * 4, 2),
    ("snr_sweep", "smoke", 2 * 2 * 4, 4),
    ("beta_sweep", "smoke", 2 + 2 * 2, 1),
    ("edr_sweep", "tfds,smoke", 3 * 2 * 4, 6),
    ("edr_sweep", "reference", 5 * 3 * 7, 5 * 3),
    ("edr_sweep", "tfds,reference,smoke", 3 * 2 * 4, 6),
    ("known_sweep", None, 4 * 3 * 9, 3),  # 4 known fractions × 3 seeds × 9 systems, one original
    ("known_sweep", "smoke", 2 * 3, 1),
])
def test_grid_sizes(name, arg, cells, groups):
    config = experiment_config(name, arg)
    expanded = validate_experiment(config)
    assert len(expanded) == cells
    assert len({cell.id for cell in expanded}) == cells
    assert len({cell.group for cell in expanded}) == groups
    # Retraining comes first in every group: the other cells measure their distance to it.
    first = {}
    for cell in expanded:
        first.setdefault(cell.group, cell.method)
    assert set(first.values()) == {"retrain"}


@pytest.mark.parametrize("change,message", [
    (lambda c: setattr(c.grid, "edr", (0.02, 0.7)), "config.grid.edr=(0.02, 0.7): must be numbers in (0, 0.5]"),
    (lambda c: setattr(c.grid, "channels", ("awgn", "laser")), "config.grid.channels=('awgn', 'laser')"),
    (lambda c: setattr(c.grid, "methods", ()), "config.grid.methods=(): must be distinct values"),
    (lambda c: setattr(c.grid, "seeds", (0, 0)), "config.grid.seeds=(0, 0): must be distinct"),
    (lambda c: setattr(c.grid, "snr_db", (float("nan"),)), "config.grid.snr_db=(nan,)"),
    (lambda c: setattr(c.grid, "known_fraction", (0.5, 0.0)),
     "config.grid.known_fraction=(0.5, 0.0): must be distinct numbers in (0, 1]"),
    (lambda c: setattr(c.grid, "known_fraction", (1.5,)), "config.grid.known_fraction=(1.5,)"),
    (lambda c: setattr(c.bases.mnist5k.train, "epochs", -1), "config.bases.mnist5k.train.epochs=-1"),
])
def test_validation_names_field_value_and_rule(change, message):
    config = experiment_config("edr_sweep", "smoke")
    change(config)
    with pytest.raises(ConfigError) as error:
        validate_experiment(config)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_sweeps_refuse_a_forget_set_without_a_backdoor():
    config = experiment_config("edr_sweep")
    dataset = next(iter(config.bases))
    config.bases[dataset].forget.kind = "random"
    with pytest.raises(ConfigError, match=rf"config.bases.{dataset}.forget.kind='random': the "
                                          "sweeps run the paper's backdoor protocol"):
        validate_experiment(config)


def test_known_fraction_cells_share_the_original_and_each_has_its_retraining():
    cells = validate_experiment(experiment_config("known_sweep", "smoke"))
    assert {cell.known_fraction for cell in cells} == {0.25, 1.0}
    assert len({cell.group for cell in cells}) == 1  # trained once for every fraction
    names = [cell.name for cell in cells]
    assert names == ["retrain_known0.25", "scu_bu0.1_known0.25", "original_known0.25",
                     "retrain_known1", "scu_bu0.1_known1", "original_known1"]
    for cell in cells:
        assert cell.retrain().known_fraction == cell.known_fraction
        assert cell.fields()["known_fraction"] == cell.known_fraction
    # The other sweeps' cells and rows are as they were: no such field.
    edr = validate_experiment(experiment_config("edr_sweep", "smoke"))
    assert all(cell.known_fraction is None and "known_fraction" not in cell.fields()
               for cell in edr)

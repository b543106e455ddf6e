"""The published numbers load from the package data, and ours sit beside them with reasons."""

import pathlib
import tomllib

from scu_jax.experiments.aggregate import aggregate
from scu_jax.experiments.paper import gap_lines, paper_comparison, paper_numbers
from scu_jax.experiments.sweeps import experiment_config

REPO = pathlib.Path(__file__).resolve().parent.parent


def test_paper_numbers_have_one_value_per_edr_and_ship_with_the_package():
    numbers = paper_numbers()
    assert numbers.edrs == (0.02, 0.04, 0.06, 0.08, 0.10)
    assert set(numbers.tables) == {"mnist", "cifar10"}
    for methods in numbers.tables.values():
        for metrics in methods.values():
            assert set(metrics) == {"accuracy_clean", "backdoor_accuracy", "mse_clean", "mse_erased"}
            assert all(len(values) == len(numbers.edrs) for values in metrics.values())
    assert numbers.tables["mnist"]["scu"]["backdoor_accuracy"][2] == 7.3  # EDR 6 %
    assert numbers.settings["mnist5k"] == ("mnist", (("awgn", 5.0), ("rician", 6.0)))
    # A wheel holds only the package data pyproject lists.
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]
    assert "paper_numbers.toml" in package_data["scu_jax.experiments"]


def test_the_reference_protocol_is_compared_with_the_paper():
    """Rows of the faithful MNIST setting (Rician 6 dB, scalar draw) sit beside the published EDR
    table, and their gaps are explained with the reference protocol's reasons."""
    base = experiment_config("edr_sweep", "reference").bases.mnist5k.to_dict()
    rows = [{"cell": f"g/{m}", "group": "g", "method": m, "dataset": "mnist5k", "channel": "rician",
             "family": "paper", "snr_db": 6.0, "edr": 0.06, "beta_u": None, "seed": 0, "status": "ok",
             "backdoor_accuracy": b, "accuracy_clean": 0.97, "mse_clean": 3.0, "mse_erased": e}
            for m, b, e in (("original", 0.98, 3.2), ("scu", 0.005, 8.0))]
    table, gaps = paper_comparison(aggregate(rows), {"mnist5k": base})
    assert "| mnist5k | 6 % | rician 6 dB | scu | 97.0 / 97.6 | 0.5 / 7.3 | 3.00 / 2.80 | 8.00 / 6.13 |" in table
    lines = gap_lines(gaps, {"mnist5k": base})
    assert any("MSE erased" in line and "300 times instead of 20" in line for line in lines), lines

"""The paper's sweeps as experiment configs (`configs/experiments/*.py` call `experiment_config`).

An experiment config holds `name`, `bases` (one system config per dataset: its preset) and `grid`
(the swept values; an empty field keeps each base's own value).
"""

from __future__ import annotations

import ml_collections

from scu_jax import presets
from scu_jax.data import DATASETS
from scu_jax.errors import ConfigError
from scu_jax.experiments.grid import EXPERIMENTS, ORIGINAL


def _datasets_and_variant(arg: str | None) -> tuple[list[str], bool, bool]:
    """(datasets, smoke, reference) named by a config argument such as `tfds,reference`."""
    tokens = [token.strip() for token in (arg or "").split(",") if token.strip()]
    datasets: list[str] = []
    for token in tokens:
        if token in ("smoke", "reference"):
            continue
        if token == "tfds":
            datasets += ["mnist", "cifar10", "cifar100"]
        elif token in DATASETS:
            datasets.append(token)
        else:
            raise ConfigError(f"unknown experiment config argument {token!r}; use datasets from: "
                              f"{', '.join(DATASETS)}, tfds, and optionally reference, smoke")
    return list(dict.fromkeys(datasets or ["mnist5k"])), "smoke" in tokens, "reference" in tokens


def _base(name: str, dataset: str, smoke: bool, reference: bool) -> ml_collections.ConfigDict:
    base = presets.preset(dataset)
    if reference:
        base = presets.use_reference_protocol(base)
    # Sweeps evaluate hundreds of systems: MINE on D_e only (the paper's MI metric), with a
    # third of the steps, most of each system's evaluation time otherwise (docs/experiments.md, "Command-line reference").
    base.evaluation.mi_steps = 500
    base.evaluation.mi_sets = ("erased",)
    if name == "snr_sweep" and dataset == "mnist5k":
        # 45 systems (3 channels × 5 SNRs × 3 seeds) plus their retraining must fit in an
        # hour on 2 cores: a third of the main job's step budget (100 + 50 epochs).
        base.train.epochs, base.train.receiver_epochs = 100, 50
    base = presets.apply_variant(base, "smoke" if smoke else None)
    if smoke:
        base.evaluation.mi_steps = 0  # MINE's compilation alone would double a smoke sweep
    return base


def _grid(name: str, smoke: bool, reference: bool) -> ml_collections.ConfigDict:
    grid = ml_collections.ConfigDict()
    # The reference protocol keeps each base's own channel (MNIST: Rician 6 dB; CIFAR: AWGN 20 dB).
    grid.channels = () if reference else ("awgn",)  # () = each base's own
    grid.families = () if reference else ("paper",)
    grid.snr_db = ()
    grid.edr = ()
    grid.beta_u = ()
    grid.known_fraction = ()
    grid.methods = (ORIGINAL, "retrain", "scu", "scu_no_cc", "vbu", "hbu", "finetune")
    grid.seeds = (0, 1, 2)
    if name == "edr_sweep":
        grid.edr = (0.02, 0.04, 0.06, 0.08, 0.10)
        if not reference:  # the field's baselines; the authors' protocol compares the paper's
            grid.methods += ("ssd", "l1_sparse", "salun")
    elif name == "known_sweep":  # corrective unlearning: the methods know part of D_e
        grid.known_fraction = (0.1, 0.25, 0.5, 1.0)
        grid.methods = (ORIGINAL, "retrain", "scu", "vbu", "hbu", "finetune", "ssd", "l1_sparse",
                        "salun")
    elif name == "snr_sweep":
        grid.channels = ("awgn", "rayleigh", "rician")
        grid.families = grid.families or ("paper",)
        grid.snr_db = (5.0, 10.0, 15.0, 20.0, 25.0)
    else:
        grid.beta_u = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
        grid.methods = (ORIGINAL, "retrain", "scu", "scu_no_cc", "vbu")
    if smoke:
        grid.seeds = (0,)
        grid.methods = (ORIGINAL, "retrain", "scu", "vbu")
        if name == "edr_sweep":
            grid.edr = (0.04, 0.08)
        elif name == "snr_sweep":
            grid.channels, grid.snr_db = ("awgn", "rayleigh"), (5.0, 20.0)
            grid.families = grid.families or ("paper",)
        elif name == "known_sweep":
            grid.known_fraction = (0.25, 1.0)
            grid.methods = (ORIGINAL, "retrain", "scu")
        else:
            grid.beta_u = (0.01, 1.0)
    return grid


def experiment_config(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """The paper's sweep `name` for the datasets and variant named in `arg`.

    `arg` is a comma-separated list of datasets (`mnist5k`, the default; `mnist`, `cifar10`,
    `cifar100`; `tfds` for all three tfds datasets) and optionally `reference` (every base system
    under the authors' protocol, `presets.use_reference_protocol`, each on its own channel and
    SNR) and `smoke` (a tiny grid on tiny systems, for tests).
    """
    if name not in EXPERIMENTS:
        raise ConfigError(f"unknown experiment {name!r}; choose one of: {', '.join(EXPERIMENTS)}")
    datasets, smoke, reference = _datasets_and_variant(arg)
    config = ml_collections.ConfigDict()
    config.name = name
    config.bases = ml_collections.ConfigDict()
    for dataset in datasets:
        config.bases[dataset] = _base(name, dataset, smoke, reference)
    config.grid = _grid(name, smoke, reference)
    # The runs that differ by their seed alone (the groups' trainings; an erased-data method's
    # cells at one grid point) as one vmapped program each. It pays where one program can fill
    # the device (a GPU); each row's times are then the whole program's, so a speed-up against
    # retraining (run alone) reads low by the runs' count divided by the gain.
    config.runs_together = False
    return config

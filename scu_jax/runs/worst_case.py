"""A trained system's worst-case forget set (`scu_jax.worst_case`), as a request file, cached.

`worst_case_request(train_workdir, size, ...)` finds the set for the system saved in
`train_workdir` (trained on the clean training set: a forget kind other than `backdoor`) and
writes it as a request file (one training index per line, its inputs in `#` comment lines) named
by the digest of everything the set depends on: the trained model's digest, the method, the size,
the seed and the search's settings. A second call with the same inputs reads the file instead of
searching again; any input changed gives another file. The file is what `forget.kind="ids"`
(`forget.ids_file`) and `scu-forget --ids` read.

`forget.kind="worst_case"` asks for it by config: `resolve_worst_case` (called by scu-unlearn and
scu-pipeline before any work) finds the trained system's hardest `forget.fraction` for SCU with
`forget.seed`, caches it in INIT_WORKDIR/worst_case (beside the system it was found for, so every
method and rerun reads one search) and names the file in `forget.ids_file`.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import time
from typing import Any

import numpy as np

from scu_jax.config import config_from_json, validate_config
from scu_jax.data.forget import read_ids
from scu_jax.runs.build import build_for, forget_seed
from scu_jax.runs.checkpointing import Checkpoints
from scu_jax.runs.files import write_json_atomic, write_text_atomic
from scu_jax.runs.saved import load_variables
from scu_jax.worst_case import WORST_CASE_METHODS, WorstCase, worst_case_set

SEARCH_DEFAULTS = {"iterations": 30, "lower_steps": 3, "step_size": 1e-2, "pool": 0}


def set_size(size: float, num_train: int) -> int:
    """K from a count (an integer ≥ 1) or a fraction of the training set (in (0, 1)).

    Raises:
      ValueError: a size that names no sample or every one.
    """
    count = int(size) if size >= 1 else int(round(size * num_train))
    if size <= 0 or (size >= 1 and size != int(size)) or not 1 <= count < num_train:
        raise ValueError(f"worst-case set size {size:g}: must be a count in [1, {num_train}) or a "
                         f"fraction of the {num_train} training samples that names at least one")
    return count


def worst_case_request(train_workdir: str | pathlib.Path, size: float, *, cache_dir: str |
                       pathlib.Path, method: str = "scu", seed: int = 0, **search) -> dict[str, Any]:
    """The worst-case set of `size` (a count, or a fraction of the training set) for the system
    in `train_workdir`, found or read from `cache_dir` (module docstring).

    Args:
      train_workdir: a finished `scu-train` workdir of a clean-set system (read only).
      size: K, a count ≥ 1 or a fraction in (0, 1).
      cache_dir: where the request files go.
      method, seed: the lower level's method and the search's seed (`worst_case_set`).
      **search: `iterations`, `lower_steps`, `step_size`, `pool` (defaults `SEARCH_DEFAULTS`).

    Returns:
      `{"path", "ids", "count", "seconds" (the search's, 0 where cached), "hardness", "cached"}`.

    Raises:
      ValueError: a bad size, method or search setting, or a system trained with a backdoor.
      FileNotFoundError: no checkpoint in `train_workdir`.
    """
    unknown = sorted(set(search) - set(SEARCH_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown worst-case search setting(s): {', '.join(unknown)}")
    if method not in WORST_CASE_METHODS:
        raise ValueError(f"worst-case method {method!r}: must be one of "
                         f"{', '.join(WORST_CASE_METHODS)}")
    settings = {**SEARCH_DEFAULTS, **search}
    checkpoints = Checkpoints(str(train_workdir), read_only=True)
    if checkpoints.latest_step() is None:
        raise FileNotFoundError(f"{train_workdir} holds no checkpoint")
    meta = checkpoints.saved_config()
    config = config_from_json(meta["config"])
    validate_config(config)
    if config.forget.kind == "backdoor":
        raise ValueError(f"{train_workdir} trained with the backdoor protocol: a worst-case set "
                         "is drawn from a clean training set (train with forget.kind='random')")
    split, system, image_shape = build_for(config, training=True)
    count = set_size(size, len(split.train_labels))
    u = config.unlearning
    inputs = {"model_sha256": checkpoints.model_digest(), "method": method, "count": count,
              "seed": int(seed), **settings, "lambda_kl": u.lambda_kl, "beta_u": u.beta_u,
              "rho": u.rho, "beta": config.train.beta}
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]
    cache = pathlib.Path(cache_dir)
    path = cache / f"worst_case_{digest}.ids"
    info_path = path.with_suffix(".json")
    if path.exists() and info_path.exists():
        info = json.loads(info_path.read_text())
        return {**info, "path": str(path), "cached": True, "seconds": 0.0,
                "ids": read_ids(path, len(split.train_labels)).tolist()}
    params, batch_stats, _ = load_variables(str(train_workdir), system, config, image_shape)
    ids, found, seconds = worst_case_ids(config, system, params, batch_stats,
                                         split.train_images, count, method=method, seed=seed,
                                         **settings)
    cache.mkdir(parents=True, exist_ok=True)
    info = {"inputs": inputs, "count": count, "hardness": found.hardness.tolist(),
            "search_seconds": seconds}
    write_json_atomic(info_path, info)
    header = "".join(f"# {line}\n" for line in (
        "worst-case forget set (scu_jax.worst_case)", json.dumps(inputs, sort_keys=True)))
    write_text_atomic(path, header + "".join(f"{int(i)}\n" for i in ids))
    return {**info, "path": str(path), "ids": ids.tolist(), "seconds": seconds, "cached": False}


def resolve_worst_case(config, init_workdir: str | pathlib.Path):
    """`config` itself unless `forget.kind` is "worst_case"; then a copy whose `forget.ids_file`
    names the set `worst_case_request` finds (or reads) for the system in `init_workdir` (module
    docstring). Raises `ValueError`/`FileNotFoundError` (one line) where it cannot."""
    if config.forget.kind != "worst_case":
        return config
    request = worst_case_request(init_workdir, config.forget.fraction, seed=forget_seed(config),
                                 cache_dir=pathlib.Path(init_workdir) / "worst_case")
    resolved = config.copy_and_resolve_references()
    resolved.forget.ids_file = request["path"]
    return resolved


def worst_case_ids(config, system, params, batch_stats, images: np.ndarray, count: int, *,
                   method: str = "scu", seed: int = 0, excluded=(), **search
                   ) -> tuple[np.ndarray, WorstCase, float]:
    """`worst_case_set` over the rows of `images` not in `excluded` (samples an earlier request
    erased), with `config`'s SCU weights and β: the chosen rows (sorted), the search's result
    and its seconds."""
    keep = np.setdiff1d(np.arange(len(images)), np.asarray(excluded, np.int64))
    u = config.unlearning
    started = time.perf_counter()
    found = worst_case_set(system, params, batch_stats, images[keep], count, method=method,
                           seed=seed, lambda_kl=u.lambda_kl, beta_u=u.beta_u, rho=u.rho,
                           beta=config.train.beta, **{**SEARCH_DEFAULTS, **search})
    return np.sort(keep[found.ids]), found, time.perf_counter() - started

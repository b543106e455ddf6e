"""What the forget-set benchmarks share: their base config and the settings' configs."""

from __future__ import annotations

import json

from scu_jax.config import default_config, validate_config


def setting_config(base, setting: str, seed: int):
    config = base.copy_and_resolve_references()
    config.seed = seed
    if setting.startswith("class"):
        config.forget.kind, config.forget.class_id = "class", int(setting[len("class"):])
    elif setting.startswith("random"):
        config.forget.kind, config.forget.fraction = "random", float(setting[len("random"):])
    else:
        raise ValueError(f"--settings: {setting!r} is neither classN nor randomF")
    validate_config(config)
    return config


def base_config(overrides: list[str]):
    config = default_config()
    config.forget.kind = "random"
    config.evaluation.mi_steps = 0
    for item in overrides:
        field, _, value = item.partition("=")
        node = config
        *parents, leaf = field.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = json.loads(value)
    validate_config(config)
    return config

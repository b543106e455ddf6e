"""Checking a config's values: the field, its value and the rule in one `ConfigError` line, and
the first difference between two configs (`scu_jax.config` validates with these)."""

from __future__ import annotations

import math
from typing import Any

from scu_jax.errors import ConfigError


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return value


def first_difference(saved: Any, wanted: Any, where: str = "there", path: str = "config") -> str:
    """The first field (in sorted order) where two JSON-able configs differ, as one phrase:
    `config.train.epochs is 300 {where} but 20 now`; "" if they are equal.

    `saved` is what a directory holds, `wanted` what the run asks for; a field missing from one
    side reads as None.
    """
    if isinstance(saved, dict) and isinstance(wanted, dict):
        for key in sorted(set(saved) | set(wanted)):
            found = first_difference(saved.get(key), wanted.get(key), where, f"{path}.{key}")
            if found:
                return found
        return ""
    return "" if saved == wanted else f"{path} is {saved!r} {where} but {wanted!r} now"


def check_field(condition: bool, field: str, value: Any, allowed: str) -> None:
    """Raises `ConfigError("config.FIELD=VALUE: ALLOWED")` unless `condition` holds."""
    if not condition:
        raise ConfigError(f"config.{field}={value!r}: {allowed}")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _choice(config, field: str, choices) -> None:
    value = config
    for part in field.split("."):
        value = value[part]
    check_field(value in choices, field, value, f"must be one of: {', '.join(sorted(choices))}")


def _boolean(config, field: str) -> None:
    value = config
    for part in field.split("."):
        value = value[part]
    check_field(isinstance(value, bool), field, value, "must be true or false")


def _number(config, field: str, low: float, high: float = math.inf, *, integer: bool = False,
            low_open: bool = False) -> None:
    value = config
    for part in field.split("."):
        value = value[part]
    kind = "an integer" if integer else "a finite number"
    ok = _finite(value) and (not integer or float(value).is_integer())
    if ok:
        ok = (value > low if low_open else value >= low) and value <= high
    bracket = "(" if low_open else "["
    upper = "inf)" if math.isinf(high) else f"{high}]"
    check_field(ok, field, value, f"must be {kind} in {bracket}{low}, {upper}")

"""Method variants the robustness benchmarks name: a shipped method with unlearning fields set.

A name is a method of `scu_jax.config.METHODS` followed by any of these suffixes, each `_`-joined:

* `e<E>`: run for E epochs with no early stop (`early_stop=False`, `max_epochs=E`);
* `sam<R>`: sharpness-aware, radius R (`sam_radius=R`).

`scu` is SCU as shipped, `scu_e40` SCU for 40 epochs past its stop, `salun_sam0.01` SalUn's
sharpness-aware step, `scu_sam0.01_e40` both.
"""

from __future__ import annotations

import math
from typing import Any

from scu_jax.config import METHODS


def variant_fields(name: str) -> dict[str, Any]:
    """The unlearning fields (`method` included) a variant's name says; ValueError otherwise."""
    method = next((m for m in sorted(METHODS, key=len, reverse=True)
                   if name == m or name.startswith(m + "_")), None)
    if method is None:
        raise ValueError(f"{name!r}: not a method ({', '.join(METHODS)}) or a variant of one")
    fields: dict[str, Any] = {"method": method}
    for token in filter(None, name[len(method):].split("_")):
        try:
            if token.startswith("sam"):
                radius = float(token[3:])
                if not math.isfinite(radius) or radius < 0:
                    raise ValueError
                fields["sam_radius"] = radius
            elif token.startswith("e") and token[1:].isdigit() and int(token[1:]) > 0:
                fields.update(early_stop=False, max_epochs=int(token[1:]))
            else:
                raise ValueError
        except ValueError:
            raise ValueError(f"{name!r}: {token!r} is neither e<epochs> nor sam<radius>") from None
    return fields


def apply_variant(config, name: str):
    """A copy of `config` running the variant `name`."""
    config = config.copy_and_resolve_references()
    for field, value in variant_fields(name).items():
        config.unlearning[field] = value
    return config

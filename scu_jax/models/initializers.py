"""Parameter initialisers: Flax's defaults, or PyTorch's (what the reference's numbers started from).

`"flax"`: Dense/Conv kernels LeCun-normal (variance 1/fan_in), biases 0.
`"torch"`: `nn.Linear`/`nn.Conv2d`'s `reset_parameters`: kernels kaiming-uniform with a = √5, i.e.
U(−1/√fan_in, 1/√fan_in) (variance 1/(3·fan_in)), and biases U(−1/√fan_in, 1/√fan_in), where
fan_in is the inputs of one output unit (in_channels·kh·kw for a convolution). The authors'
reference code keeps these PyTorch defaults.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax

INITS = ("flax", "torch")

# kaiming_uniform(a=√5): bound = √(6 / ((1 + a²)·fan_in)) = 1/√fan_in, a variance of 1/(3·fan_in).
_TORCH_KERNEL = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _torch_bias(fan_in: int):
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape, dtype=jax.numpy.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def layer_inits(kind: str, fan_in: int, *, bias: bool = True) -> dict[str, Any]:
    """The `kernel_init` (and `bias_init`) keyword arguments of a Dense or Conv layer."""
    if kind == "flax":
        return {}
    if kind != "torch":
        raise ValueError(f"unknown initialiser {kind!r}; choose one of: {', '.join(INITS)}")
    inits = {"kernel_init": _TORCH_KERNEL}
    if bias:
        inits["bias_init"] = _torch_bias(fan_in)
    return inits

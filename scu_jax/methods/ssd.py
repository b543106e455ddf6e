"""Selective Synaptic Dampening (Foster et al., AAAI 2024) for the codec: retrain-free, one pass.

```
I_D = mean over the batches of D   of (∂L/∂θ)²      L: the codec's training objective
I_e = mean over the batches of D_e of (∂L/∂θ)²         (β·KL + MSE, + CE with a joint receiver),
                                                        each batch's mean, as training saw it
θ_i ← θ_i · min((λ·I_D,i / I_e,i)^p, 1)   where I_e,i > α·I_D,i;   θ_i unchanged elsewhere
```
D is the training set the system learnt from (D_e ∪ D_r), so I_D is the importance "to
everything it knows" and a parameter far more important to D_e than to the rest (α) is scaled
down in proportion (λ), never up. The authors' importance is their `calc_importance` (squared
gradients of each batch's mean loss, averaged over batches); their CIFAR settings are α = 10,
λ = 1, p = 1. No optimiser, no steps: the trainable parameters (the codec, and the receiver where
it trains jointly) are rescaled once; BatchNorm statistics are left as they are.

Defaults (`unlearning.ssd_alpha = 15`, `ssd_lambda = 1`): λ and p are the paper's; its α = 10
does not transfer. Swept on the embedded MNIST's main-job system (seed 0, EDR 6 %; `scu-unlearn
--config=configs/mnist.py --config.unlearning.method=ssd --config.unlearning.ssd_alpha=A`, A in
10, 12, 15, 20, 30): α = 10 dampens 1,176 parameters and costs 18 points of D_clean accuracy
(79 → 62 %) for a backdoor of 36 %; α = 15 dampens 457, backdoor 92 → 17 %, accuracy unchanged;
from α = 20 no parameter qualifies. docs/results.md "Baselines from the field: their settings" has the
table and the other seeds.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from scu_jax.methods.base import CodecObjective, objective_loss, trainable_params
from scu_jax.models import System


class SSD(NamedTuple):
    """SSD as pure functions.

    `importance(params, batch_stats, images, labels, key)`: the mean squared gradient of each
    trainable parameter over the batches of `images` (batches, B, H, W, C) and `labels`
    (batches, B); `dampen(params, importance_all, importance_erased)` → (params, the number of
    parameters it scaled).
    """

    importance: Callable[..., Any]
    dampen: Callable[..., tuple[Any, jax.Array]]


def ssd(system: System, objective: CodecObjective, *, alpha: float = 10.0,
        dampening: float = 1.0, exponent: float = 1.0) -> SSD:
    """SSD with selection weighting `alpha` (α), dampening constant `dampening` (λ) and
    `exponent` (p); see the module docstring.

    Args:
      system: the two modules.
      objective: the loss whose gradients measure importance.
      alpha: α, a parameter is dampened where its D_e importance exceeds α times its importance to
        the whole training set.
      dampening: λ, the dampening's scale.
      exponent: p.

    Returns:
      An `SSD(importance, dampen)`: no steps, one pass.

    Example:
      >>> method = scu_jax.ssd(system, objective, alpha=10.0)
      >>> batches = images.reshape(2, 8, 28, 28, 1), labels.reshape(2, 8)
      >>> all_importance = method.importance(state.params, state.batch_stats, *batches, key)
      >>> erased_importance = jax.tree.map(lambda i: 100.0 * i, all_importance)
      >>> dampened, count = method.dampen(state.params, all_importance, erased_importance)
      >>> int(count) > 0   # parameters 100× more important to D_e were scaled down
      True
    """
    joint = objective.joint_receiver
    loss = objective_loss(system, objective)

    def importance(params, batch_stats, images, labels, key):
        trainable = trainable_params(params, joint)

        def add(total, batch):
            index, x, y = batch
            grads = jax.grad(loss)(trainable, params, batch_stats, x, y,
                                   jax.random.fold_in(key, index))
            return jax.tree.map(lambda t, g: t + jnp.square(g), total, grads), None

        count = images.shape[0]
        total, _ = jax.lax.scan(add, jax.tree.map(jnp.zeros_like, trainable),
                                (jnp.arange(count), images, labels))
        return jax.tree.map(lambda t: t / count, total)

    def dampen(params, importance_all, importance_erased):
        trainable = trainable_params(params, joint)

        def scale(theta, i_all, i_erased):
            selected = i_erased > alpha * i_all
            factor = jnp.minimum(
                (dampening * i_all / jnp.where(selected, i_erased, 1.0)) ** exponent, 1.0)
            return jnp.where(selected, theta * factor, theta), jnp.sum(selected)

        scaled = jax.tree.map(scale, trainable, importance_all, importance_erased)
        is_pair = lambda x: isinstance(x, tuple)  # noqa: E731
        new = jax.tree.map(lambda pair: pair[0], scaled, is_leaf=is_pair)
        count = sum(pair[1] for pair in jax.tree.leaves(scaled, is_leaf=is_pair))
        return {**params, **new}, count

    return SSD(jax.jit(importance), jax.jit(dampen))

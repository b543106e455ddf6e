"""ℓ1-sparse unlearning (Jia et al., NeurIPS 2023, "Model Sparsity Can Simplify Machine
Unlearning"), for the codec: fine-tune on D_r with an ℓ1 penalty on the weights, linearly decayed.

```
loss = L(D_r) + γ_e·‖θ‖₁,      γ_e = γ·(1 − e/E) in epoch e = 0 … E−1      (the authors' `FT_l1`)
```
The penalty enters as its (sub)gradient γ_e·sign(θ), added to the loss's gradient before the clip
and Adam (`l1_penalty`, an optax transformation: what autodiff of γ_e‖θ‖₁ gives), over every
trainable parameter; the training recipe chains it before its optimiser where
`Recipe.l1_strength` is set. The rest is the `finetune` baseline (`finetune.l1_sparse`): the
training recipe's codec phase over D_r from the trained system, fresh optimiser states.

Default γ = 1e-6 (`unlearning.l1_strength`): the paper's 5e-4 does not transfer, since the
codec's reconstruction gradients are small and under Adam a penalty that size decides every
update. Swept on the embedded MNIST's main-job system (seed 0, EDR 6 %; `scu-unlearn
--config=configs/mnist.py --config.unlearning.method=l1_sparse --config.unlearning.l1_strength=G`,
G in 5e-4, 1e-4, 1e-5, 1e-6, 1e-7): 5e-4 collapses the decoder (D_clean accuracy 0 %, MSE 37);
1e-6 is the largest γ within a point of no penalty (backdoor 1.3 %, accuracy 92.4 %).
docs/results.md, "Baselines from the field: their settings", has the table and the other seeds.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class L1PenaltyState(NamedTuple):
    count: jax.Array  # updates applied so far


def l1_strength(strength: float, steps_per_epoch: int, epochs: int, count: jax.Array
                ) -> jax.Array:
    """γ_e at update `count`: γ·(1 − e/E), e = count // steps_per_epoch (0 past epoch E)."""
    epoch = count // steps_per_epoch
    return strength * jnp.maximum(1.0 - epoch.astype(jnp.float32) / epochs, 0.0)


def l1_penalty(strength: float, steps_per_epoch: int, epochs: int
               ) -> optax.GradientTransformation:
    """Adds γ_e·sign(θ) to every gradient (`l1_strength` gives γ_e); needs `params`."""
    if steps_per_epoch < 1 or epochs < 1:
        raise ValueError("l1_penalty needs steps_per_epoch >= 1 and epochs >= 1")

    def init(params: Any) -> L1PenaltyState:
        del params
        return L1PenaltyState(jnp.zeros((), jnp.int32))

    def update(updates, state: L1PenaltyState, params=None):
        if params is None:
            raise ValueError("l1_penalty needs the parameters (tx.update(grads, state, params))")
        gamma = l1_strength(strength, steps_per_epoch, epochs, state.count)
        updates = jax.tree.map(lambda g, p: g + gamma * jnp.sign(p), updates, params)
        return updates, L1PenaltyState(state.count + 1)

    return optax.GradientTransformation(init, update)

"""HBU, Hessian-based unlearning as the reference runs it (spec §6).

Per (erased, remaining) batch pair: a one-sample Hutchinson estimate of the diagonal Hessian of the
remaining loss `L_r = β·KL_prior + MSE`, `h = v ⊙ (H_r v)` with Rademacher v, the gradient g of the
erased loss (the same loss on the erased batch), then the ascent step

    θ ← θ + (0.1·lr + 0.005) · (0.1·g) / (sqrt(0.001·h²) + lr).

The Hessian-vector product is forward-over-reverse: `jax.jvp` of `jax.grad`.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections

from scu_jax import losses
from scu_jax.models import System, to_unit_interval
from scu_jax.unlearning.base import (Batch, StepMetrics, UnlearnState, UnlearningMethod,
                                     backdoor_rate, codec_forward, frozen_original,
                                     receiver_logits, trainable_params)


def hessian_vector_product(loss: Callable[[Any], jax.Array], params: Any, vector: Any) -> Any:
    """`H v` of a scalar `loss` at `params`: `jax.jvp` of `jax.grad` (forward-over-reverse)."""
    return jax.jvp(jax.grad(loss), (params,), (vector,))[1]


def rademacher_like(key: jax.Array, tree: Any) -> Any:
    """A pytree of ±1 entries shaped like `tree`."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    return treedef.unflatten([jax.random.rademacher(k, leaf.shape, leaf.dtype)
                              for k, leaf in zip(keys, leaves)])


def hutchinson_diagonal(loss: Callable[[Any], jax.Array], params: Any, key: jax.Array) -> Any:
    """One-sample Hutchinson estimate of diag(H): `v ⊙ (H v)`, v Rademacher (unbiased)."""
    vector = rademacher_like(key, params)
    return jax.tree.map(jnp.multiply, vector, hessian_vector_product(loss, params, vector))


def hbu(config: ml_collections.ConfigDict, system: System) -> UnlearningMethod:
    lr, t = config.unlearning.learning_rate, config.train

    def init(params, batch_stats) -> UnlearnState:
        return UnlearnState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                            opt_state=(), original=frozen_original(params, batch_stats))

    def step(state: UnlearnState, batch: Batch, key: jax.Array):
        erased_key, remain_key, probe_key = jax.random.split(jax.random.fold_in(key, state.step), 3)
        trainable = trainable_params(state.params, config)

        def training_loss(trainable_params_, images, forward_key):
            params = {**state.params, **trainable_params_}
            out, batch_stats = codec_forward(system, params, state.batch_stats, images, forward_key)
            loss = (t.beta * losses.kl_to_prior(out.mu, out.logvar)
                    + losses.reconstruction_mse(out.x_hat, to_unit_interval(images)))
            return loss, (out, batch_stats)

        def remain_loss(p):
            return training_loss(p, batch.remain_images, remain_key)[0]

        diagonal = hutchinson_diagonal(remain_loss, trainable, probe_key)
        (erased_loss, (out_e, batch_stats)), grads = jax.value_and_grad(
            lambda p: training_loss(p, batch.erased_images, erased_key), has_aux=True)(trainable)
        scale = 0.1 * lr + 0.005
        updated = jax.tree.map(
            lambda p, g, h: p + scale * (0.1 * g) / (jnp.sqrt(0.001 * jnp.square(h)) + lr),
            trainable, grads, diagonal)
        logits_e = receiver_logits(system, state.params, out_e.x_hat, config)
        metrics = StepMetrics(-erased_loss, backdoor_rate(logits_e, batch.erased_targets),
                              erased_loss, jnp.zeros(()))
        return state.replace(step=state.step + 1, params={**state.params, **updated},
                             batch_stats=batch_stats), metrics

    return UnlearningMethod(init, step)

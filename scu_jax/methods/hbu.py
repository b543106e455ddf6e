"""HBU, Hessian-based unlearning as the authors' reference code runs it.

Per (erased, remaining) batch pair: a one-sample Hutchinson estimate of the diagonal Hessian of the
remaining loss `L_r = β·KL_prior + MSE`, `h = v ⊙ (H_r v)` with Rademacher v, the gradient g of the
erased loss (the codec's training loss on the erased batch: `β·KL_prior + MSE` on MNIST,
`β·KL_prior + 30·MSE + CE(receiver(x̂_e), y_target)/30` on CIFAR), then the ascent step

    θ ← θ + (0.1·lr + 0.005) · (0.1·g) / (sqrt(0.001·h²) + lr).

On CIFAR the receiver is in θ but not in L_r, so its h is 0. The reference draws v once, from a
fixed seed, and reuses it at every step (`unlearning.hbu_fixed_probe`); by default each step draws
its own. The Hessian-vector product is forward-over-reverse: `jax.jvp` of `jax.grad`.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from scu_jax import losses
from scu_jax.methods.base import (Batch, CodecObjective, Method, StepMetrics, UnlearnState,
                                  backdoor_rate, codec_forward, receiver_logits, remain_inputs,
                                  trainable_params, unlearn_state)
from scu_jax.models import System, to_unit_interval

# Folded into the run's key for the one probe that `hbu_fixed_probe` reuses (no step is this
# large, so it never collides with a step's own key).
_FIXED_PROBE = 2**31 - 1


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


def probe_key(key: jax.Array, step: jax.Array, *, fixed: bool) -> jax.Array:
    """The key of a step's Rademacher probe: the step's own (from `fold_in(key, step)`), or with
    `fixed` one key for every step of the run (the reference's fixed seed)."""
    if fixed:
        return jax.random.fold_in(key, _FIXED_PROBE)
    return jax.random.split(jax.random.fold_in(key, step), 3)[2]


def hbu(system: System, objective: CodecObjective, *, learning_rate: float,
        fixed_probe: bool = False, augment_remain: bool = False) -> Method:
    """HBU's ascent step (see the module docstring) at `learning_rate` (its `lr`).

    `fixed_probe`: one Rademacher probe for the whole run (the reference's fixed seed);
    `augment_remain`: D_r batches freshly cropped at every step.

    Args:
      system: the two modules.
      objective: the codec's training loss.
      learning_rate: the step size.
      fixed_probe, augment_remain: as above.

    Returns:
      A `Method`.

    Example:
      >>> method = scu_jax.hbu(system, objective, learning_rate=1e-4)
      >>> batch = scu_jax.Batch(images, jnp.full((16,), 2), images, labels)
      >>> new, metrics = jax.jit(method.step)(method.init(state.params, state.batch_stats), batch, key)
      >>> bool(jnp.isfinite(metrics.loss)), int(new.step)
      (True, 1)
    """
    lr, joint = learning_rate, objective.joint_receiver

    def step(state: UnlearnState, batch: Batch, key: jax.Array):
        step_key = jax.random.fold_in(key, state.step)
        erased_key, remain_key, _ = jax.random.split(step_key, 3)
        probe = probe_key(key, state.step, fixed=fixed_probe)
        trainable = trainable_params(state.params, joint)
        x_r = remain_inputs(batch.remain_images, jax.random.fold_in(step_key, 5), augment_remain)
        x_e = to_unit_interval(batch.erased_images)

        def remain_loss(trainable_params_):
            params = {**state.params, **trainable_params_}
            out, _ = codec_forward(system, params, state.batch_stats, x_r,
                                   *jax.random.split(remain_key))
            return (objective.beta * losses.kl_to_prior(out.mu, out.logvar)
                    + losses.reconstruction_mse(out.x_hat, x_r))

        def erased_loss(trainable_params_):
            params = {**state.params, **trainable_params_}
            out, batch_stats = codec_forward(system, params, state.batch_stats, x_e,
                                             *jax.random.split(erased_key))
            logits, batch_stats = receiver_logits(system, params, batch_stats, out.x_hat, joint)
            loss = losses.codec_loss(out.mu, out.logvar, out.x_hat, x_e, beta=objective.beta,
                                     mse_weight=objective.mse_weight, receiver_logits=logits,
                                     labels=batch.erased_targets, ce_weight=objective.ce_weight)
            return loss, (logits, batch_stats)

        diagonal = hutchinson_diagonal(remain_loss, trainable, probe)
        (loss_e, (logits_e, batch_stats)), grads = jax.value_and_grad(
            erased_loss, has_aux=True)(trainable)
        scale = 0.1 * lr + 0.005
        updated = jax.tree.map(
            lambda p, g, h: p + scale * (0.1 * g) / (jnp.sqrt(0.001 * jnp.square(h)) + lr),
            trainable, grads, diagonal)
        metrics = StepMetrics(-loss_e, backdoor_rate(logits_e, batch.erased_targets),
                              loss_e, jnp.zeros(()))
        return state.replace(step=state.step + 1, params={**state.params, **updated},
                             batch_stats=batch_stats), metrics

    return Method(unlearn_state, step)

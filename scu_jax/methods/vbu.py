"""VBU as the authors' reference code runs it: gradient ascent on the erased data only.

`loss = −β_u · F_e` with SCU's erased term F_e: MSE(x̂_e, x_e) on MNIST, `MSE + CE(receiver(x̂_e),
y_target)/30` on CIFAR (the reference's `−β_u·MSE − β_u·CE/30`); Adam, same loop and stopping
rules as SCU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from scu_jax.methods.base import (Batch, CodecObjective, Method, StepMetrics, backdoor_rate,
                                  codec_forward, forget_term, gradient_method, receiver_logits)
from scu_jax.models import System, to_unit_interval


def vbu(system: System, objective: CodecObjective, *, learning_rate: float, grad_clip: float,
        beta_u: float, erased_objective: str = "mse") -> Method:
    """VBU: Adam on `−β_u · F_e` (`forget_term(erased_objective, ...)`).

    Args:
      system: the two modules.
      objective: the codec's training loss (its CE weight says whether the receiver unlearns too).
      learning_rate, grad_clip: Adam's step size and the global grad-norm clip.
      beta_u: β_u, the ascent's weight.
      erased_objective: F_e: "mse", "ce" or "mse+ce".

    Returns:
      A `Method`.

    Example:
      >>> method = scu_jax.vbu(system, objective, learning_rate=1e-4, grad_clip=5.0, beta_u=0.1)
      >>> batch = scu_jax.Batch(images, jnp.full((16,), 2), images, labels)
      >>> _, metrics = jax.jit(method.step)(method.init(state.params, state.batch_stats), batch, key)
      >>> bool(metrics.loss < 0)   # −β_u·F_e: it ascends the erased error
      True
    """
    joint = objective.joint_receiver

    def loss_fn(params, batch_stats, original, batch: Batch, key):
        del original
        out_e, batch_stats = codec_forward(system, params, batch_stats, batch.erased_images,
                                           *jax.random.split(key))
        logits_e, batch_stats = receiver_logits(system, params, batch_stats, out_e.x_hat, joint)
        forget = forget_term(erased_objective, objective.ce_weight, out_e.x_hat,
                             to_unit_interval(batch.erased_images), logits_e, batch.erased_targets)
        loss = -beta_u * forget
        return loss, (batch_stats, StepMetrics(loss, backdoor_rate(logits_e, batch.erased_targets),
                                               forget, jnp.zeros(())))

    return gradient_method(loss_fn, learning_rate=learning_rate, grad_clip=grad_clip,
                           joint_receiver=joint)

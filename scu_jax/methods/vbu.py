"""VBU as the reference runs it (spec §6): gradient ascent on the erased data only.

`loss = −β_u · F_e` with SCU's erased term F_e: MSE(x̂_e, x_e) on MNIST, `MSE + CE(receiver(x̂_e),
y_target)/30` on CIFAR (the reference's `−β_u·MSE − β_u·CE/30`); Adam, same loop and stopping
rules as SCU.
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections

from scu_jax.models import System, to_unit_interval
from scu_jax.methods.base import (Batch, StepMetrics, UnlearningMethod, backdoor_rate,
                                  codec_forward, receiver_logits)
from scu_jax.methods.scu import forget_term, make_gradient_method


def vbu(config: ml_collections.ConfigDict, system: System) -> UnlearningMethod:
    def loss_fn(params, batch_stats, original, batch: Batch, key):
        del original
        out_e, batch_stats = codec_forward(system, params, batch_stats, batch.erased_images, key)
        logits_e, batch_stats = receiver_logits(system, params, batch_stats, out_e.x_hat, config)
        forget = forget_term(config, out_e.x_hat, to_unit_interval(batch.erased_images), logits_e,
                             batch.erased_targets)
        loss = -config.unlearning.beta_u * forget
        return loss, (batch_stats, StepMetrics(loss, backdoor_rate(logits_e, batch.erased_targets),
                                               forget, jnp.zeros(())))

    return make_gradient_method(config, system, loss_fn)

"""Retraining from scratch on D_r with the original recipe: exact unlearning, the gold standard.

The reference never ran it (it quotes 275 s on MNIST); we run it and measure every method against
it. Same architecture, initialisation seed, optimiser, epochs and batch size as the original
training (spec §3), on the remaining data only. Checkpointed every epoch, so it resumes.
"""

from __future__ import annotations

import ml_collections

from scu_jax.runs import train
from scu_jax.models import System
from scu_jax.methods.base import TrainingMethod


def retrain(config: ml_collections.ConfigDict, system: System) -> TrainingMethod:
    """Ignores the trained parameters: `init` re-initialises the system as training did."""
    image_shape = tuple(system.codec.decoder.image_shape)

    def init(params, batch_stats):
        del params, batch_stats  # exact unlearning starts from scratch
        return train.initial_state(system, config, image_shape)

    return TrainingMethod(init, train.make_codec_step(system, config), config)


"""Fine-tuning baseline: continue training the codec on the remaining data D_r only.

A common cheap baseline: it never looks at D_e and relies on forgetting by interference. It runs
the training recipe's codec step (spec §3) for `unlearning.finetune_epochs` epochs over D_r, with a
fresh Adam state at the unlearning learning rate, scan-fused like training.
"""

from __future__ import annotations

import ml_collections

from scu_jax.runs import train
from scu_jax.models import System
from scu_jax.methods.base import TrainingMethod


def finetune_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The training recipe restricted to codec epochs on D_r at the unlearning learning rate."""
    tuned = config.copy_and_resolve_references()
    with tuned.unlocked():
        tuned.train.receiver_epochs = 0
        tuned.train.epochs = config.unlearning.finetune_epochs
        tuned.train.learning_rate = config.unlearning.learning_rate
        tuned.train.batch_size = config.unlearning.batch_size
    return tuned


def finetune(config: ml_collections.ConfigDict, system: System) -> TrainingMethod:
    """Starts from the trained parameters with a fresh optimiser; steps are the codec step."""
    tuned = finetune_config(config)
    return TrainingMethod(lambda params, batch_stats: train.train_state_from(params, batch_stats, tuned),
                          train.make_codec_step(system, tuned), tuned)

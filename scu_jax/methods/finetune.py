"""Fine-tuning baseline: continue training the codec on the remaining data D_r only.

A common cheap baseline: it never looks at D_e and relies on forgetting by interference. It is
the training recipe's codec phase over D_r from the trained parameters, with fresh optimiser
states (`training.train_state_from`), at the unlearning learning rate and batch size.
"""

from __future__ import annotations

import dataclasses

from scu_jax.methods.training import Recipe


def finetune(recipe: Recipe, *, learning_rate: float, batch_size: int, epochs: int) -> Recipe:
    """The training recipe restricted to `epochs` codec epochs at `learning_rate`.

    Args:
      recipe: the training recipe.
      learning_rate, batch_size, epochs: the fine-tuning's.

    Returns:
      A `Recipe` with no receiver epochs, to run on D_r from the trained state.

    Example:
      >>> scu_jax.finetune(recipe, learning_rate=1e-4, batch_size=16, epochs=20).total_epochs
      20
    """
    return dataclasses.replace(recipe, receiver_epochs=0, epochs=epochs,
                               learning_rate=learning_rate, batch_size=batch_size)


def l1_sparse(recipe: Recipe, *, learning_rate: float, batch_size: int, epochs: int,
              strength: float, steps_per_epoch: int) -> Recipe:
    """ℓ1-sparse unlearning (`methods/sparse.py`): the training recipe restricted to `epochs`
    codec epochs at `learning_rate`, with the ℓ1 penalty γ = `strength` decayed over them
    (`steps_per_epoch` steps an epoch over D_r).

    Args:
      recipe: the training recipe.
      learning_rate, batch_size, epochs: the fine-tuning's.
      strength: γ, the penalty at the first epoch.
      steps_per_epoch: steps an epoch over D_r (the decay's clock).

    Returns:
      A `Recipe`, run as fine-tuning is.

    Example:
      >>> sparse = scu_jax.l1_sparse(recipe, learning_rate=1e-4, batch_size=16, epochs=20,
      ...                            strength=1e-6, steps_per_epoch=225)
      >>> sparse.epochs, sparse.l1_strength
      (20, 1e-06)
    """
    return dataclasses.replace(recipe, receiver_epochs=0, epochs=epochs,
                               learning_rate=learning_rate, batch_size=batch_size,
                               l1_strength=strength, l1_steps_per_epoch=steps_per_epoch)

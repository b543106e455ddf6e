"""What MINE and InfoNCE training share: the critic's optimiser and the minibatch schedule."""

from __future__ import annotations

import jax
import optax

Array = jax.Array


def critic_optimizer(learning_rate: float) -> optax.GradientTransformation:
    """Adam for a critic, rebuilt from the static learning rate inside each step.

    Not stored in the training state: states with equal hyperparameters then share one treedef
    and one compiled program, where a stored optax object (fresh closures per construction)
    would force a recompile.
    """
    return optax.adam(learning_rate)


def epoch_batches(key: Array, num_samples: int, num_steps: int, batch_size: int) -> Array:
    """Batch indices of `num_steps` steps, (num_steps, batch_size), drawn epoch by epoch.

    Each epoch is one permutation of the data cut into `num_samples // batch_size` batches, so
    no batch repeats a sample. One sort per epoch instead of one `random.choice(replace=False)`
    per step, which would sort all N indices every step.
    """
    if batch_size > num_samples:
        raise ValueError(f"batch_size {batch_size} exceeds the {num_samples} training samples")
    steps_per_epoch = num_samples // batch_size
    num_epochs = -(-num_steps // steps_per_epoch)
    permutations = jax.vmap(lambda k: jax.random.permutation(k, num_samples))(
        jax.random.split(key, num_epochs))
    batches = permutations[:, :steps_per_epoch * batch_size].reshape((-1, batch_size))
    return batches[:num_steps]

"""Training the semantic communication system: the receiver step, the codec step, the recipe.

MNIST: the receiver classifier trains first on the poisoned training set (D_e ∪ D_r) and is then
frozen; the codec trains with the VAE loss `β·KL_prior + MSE`. CIFAR: the receiver trains jointly
with the codec through the `CE(receiver(x̂), y)/30` term. A `Recipe` holds the hyper-parameters;
`phases` turns it into the engine's receiver and codec phases over a dataset. Training,
retraining (exact unlearning: the recipe from scratch on D_r) and fine-tuning (the codec phase on
D_r from the trained system) are all this recipe.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from scu_jax import losses
from scu_jax.data.augment import crop_keeping_trigger
from scu_jax.data.batching import epoch_permutation
from scu_jax.engine import Phase
from scu_jax.methods.base import (CodecObjective, codec_forward, make_optimizer, receiver_logits,
                                  trainable_params)
from scu_jax.methods.sparse import l1_penalty
from scu_jax.models import System, apply_receiver, init_system, to_unit_interval

RECEIVER, CODEC = "receiver", "codec"


@flax.struct.dataclass
class TrainState:
    """Everything a training run carries between steps (a pytree).

    Attributes:
      step: the global step over both phases.
      params: `{"codec": ..., "receiver": ...}`.
      batch_stats: BatchNorm running averages (`{}` for the MLP codec).
      opt_state: `{"receiver": ..., "codec": ...}`, one Adam state per phase.

    Example:
      >>> int(state.step), sorted(state.opt_state)
      (0, ['codec', 'receiver'])
    """

    step: jax.Array  # global step over both phases
    params: dict[str, Any]  # {"codec": ..., "receiver": ...}
    batch_stats: dict[str, Any]  # BatchNorm running averages ({} for the MLP codec)
    opt_state: dict[str, Any]  # {"receiver": ..., "codec": ...}


class TrainMetrics(NamedTuple):
    loss: jax.Array
    accuracy: jax.Array  # the receiver's accuracy on the batch


class Examples(NamedTuple):
    """One training step's batch.

    Attributes:
      images: uint8 (B, H, W, C).
      labels: int (B,).

    Example:
      >>> step = jax.jit(scu_jax.codec_step(system, recipe))
      >>> new_state, metrics = step(state, scu_jax.Examples(images, labels), key)
      >>> int(new_state.step)
      1
    """

    images: jax.Array
    labels: jax.Array


@dataclasses.dataclass(frozen=True)
class Recipe:
    """The training recipe's hyper-parameters (the paper's training set-up).

    Attributes:
      objective: the codec's loss (`CodecObjective`).
      learning_rate: Adam's step size in the codec phase.
      receiver_learning_rate: Adam's step size in the receiver phase.
      grad_clip: the global grad-norm clip of both phases.
      batch_size: images a step.
      receiver_epochs: the receiver phase's epochs (first, on raw poisoned images).
      epochs: the codec phase's epochs (then).
      crop: random crops that keep the trigger, drawn at every step (CIFAR).
      reset_optimizer_each_epoch: a fresh Adam every epoch (the reference builds one an epoch).
      l1_strength, l1_steps_per_epoch: ℓ1-sparse unlearning (`l1_sparse`): the codec phase's
        gradient gets γ_e·sign(θ), γ_e = l1_strength·(1 − e/epochs) in epoch e of
        `l1_steps_per_epoch` steps (0: no penalty).

    Example:
      >>> recipe.total_epochs, recipe.phase_of(0), recipe.phase_of(1)
      (3, 'receiver', 'codec')
    """

    objective: CodecObjective
    learning_rate: float
    receiver_learning_rate: float
    grad_clip: float
    batch_size: int
    receiver_epochs: int
    epochs: int
    crop: bool = False  # random crops that keep the trigger, drawn at every step
    reset_optimizer_each_epoch: bool = False  # the reference builds an optimiser per epoch
    # ℓ1-sparse unlearning (`methods/sparse.py`): the codec phase's gradient gets γ_e·sign(θ),
    # γ_e = l1_strength·(1 − e/epochs) in epoch e of `l1_steps_per_epoch` steps (0: no penalty).
    l1_strength: float = 0.0
    l1_steps_per_epoch: int = 0

    @property
    def total_epochs(self) -> int:
        return self.receiver_epochs + self.epochs

    def phase_of(self, epoch: int) -> str:
        return RECEIVER if epoch < self.receiver_epochs else CODEC


def _optimizers(recipe: Recipe) -> dict[str, optax.GradientTransformation]:
    codec = make_optimizer(recipe.learning_rate, recipe.grad_clip)
    if recipe.l1_strength:
        codec = optax.chain(l1_penalty(recipe.l1_strength, recipe.l1_steps_per_epoch,
                                       recipe.epochs), codec)
    return {RECEIVER: make_optimizer(recipe.receiver_learning_rate, recipe.grad_clip),
            CODEC: codec}


def optimizer_state(recipe: Recipe, params: dict[str, Any], phase: str) -> Any:
    """A fresh optimiser state for `phase`'s trainable parameters."""
    trainable = (params[RECEIVER] if phase == RECEIVER
                 else trainable_params(params, recipe.objective.joint_receiver))
    return _optimizers(recipe)[phase].init(trainable)


def train_state_from(params: dict[str, Any], batch_stats: dict[str, Any],
                     recipe: Recipe) -> TrainState:
    """A `TrainState` at step 0 holding `params`, with fresh optimiser states."""
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                      opt_state={phase: optimizer_state(recipe, params, phase)
                                 for phase in (RECEIVER, CODEC)})


def initial_state(system: System, recipe: Recipe, seed: int,
                  image_shape: Sequence[int]) -> TrainState:
    """The freshly initialised state of a run (parameters from `fold_in(PRNGKey(seed), 0)`).

    Args:
      system: the two modules.
      recipe: the training recipe (its optimisers).
      seed: the run's seed.
      image_shape: `(H, W, C)` of one image.

    Returns:
      A `TrainState` at step 0.

    Example:
      >>> fresh = scu_jax.initial_state(system, recipe, seed=1, image_shape=(28, 28, 1))
      >>> int(fresh.step), sorted(fresh.params)
      (0, ['codec', 'receiver'])
    """
    variables = init_system(system, jax.random.fold_in(jax.random.PRNGKey(seed), 0), image_shape)
    return train_state_from(variables["params"], variables["batch_stats"], recipe)


def receiver_step(system: System, recipe: Recipe):
    """One cross-entropy step of the receiver on raw (poisoned) training images.

    Args:
      system: the two modules.
      recipe: the training recipe (the receiver's learning rate, the clip).

    Returns:
      `step(state, batch, key)` → `(state, TrainMetrics(loss, accuracy))`, pure; `batch` is an
      `Examples`.

    Example:
      >>> step = jax.jit(scu_jax.receiver_step(system, recipe))
      >>> new_state, metrics = step(state, scu_jax.Examples(images, labels), key)
      >>> bool(jnp.isfinite(metrics.loss)), 0.0 <= float(metrics.accuracy) <= 1.0
      (True, True)
    """
    tx = _optimizers(recipe)[RECEIVER]

    def step(state: TrainState, batch: Examples, key: jax.Array):
        del key  # The receiver step draws no randomness.
        x = to_unit_interval(batch.images)

        def loss_fn(receiver_params):
            logits, batch_stats = apply_receiver(system, {RECEIVER: receiver_params},
                                                 state.batch_stats, x, train=True)
            return losses.cross_entropy(logits, batch.labels), (logits, batch_stats)

        (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params[RECEIVER])
        updates, opt = tx.update(grads, state.opt_state[RECEIVER], state.params[RECEIVER])
        params = {**state.params, RECEIVER: optax.apply_updates(state.params[RECEIVER], updates)}
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                                  opt_state={**state.opt_state, RECEIVER: opt})
        return new_state, TrainMetrics(loss, jnp.mean(jnp.argmax(logits, -1) == batch.labels))

    return step


def codec_step(system: System, recipe: Recipe):
    """One step of the codec loss (with the receiver jointly where `ce_weight > 0`).

    Args:
      system: the two modules.
      recipe: the training recipe (the codec's objective and learning rate, the clip, the crops).

    Returns:
      `step(state, batch, key)` → `(state, TrainMetrics(loss, accuracy))`, pure; it draws its
      randomness from `fold_in(key, state.step)`.

    Example:
      >>> step = jax.jit(scu_jax.codec_step(system, recipe), donate_argnums=0)
      >>> fresh = scu_jax.initial_state(system, recipe, seed=0, image_shape=(28, 28, 1))
      >>> losses = []
      >>> for _ in range(20):
      ...     fresh, metrics = step(fresh, scu_jax.Examples(images, labels), key)
      ...     losses.append(float(metrics.loss))
      >>> losses[-1] < losses[0]
      True
    """
    objective, joint = recipe.objective, recipe.objective.joint_receiver
    tx = _optimizers(recipe)[CODEC]

    def step(state: TrainState, batch: Examples, key: jax.Array):
        latent_key, channel_key, crop_key = jax.random.split(jax.random.fold_in(key, state.step), 3)
        x = to_unit_interval(batch.images)
        if recipe.crop:
            x = crop_keeping_trigger(crop_key, x)

        def loss_fn(trainable):
            params = {**state.params, **trainable}
            out, batch_stats = codec_forward(system, params, state.batch_stats, x, latent_key,
                                             channel_key)
            logits, batch_stats = receiver_logits(system, params, batch_stats, out.x_hat, joint)
            loss = losses.codec_loss(
                out.mu, out.logvar, out.x_hat, x, beta=objective.beta,
                mse_weight=objective.mse_weight, receiver_logits=logits, labels=batch.labels,
                ce_weight=objective.ce_weight)
            return loss, (batch_stats, logits)

        trainable = trainable_params(state.params, joint)
        (loss, (batch_stats, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
        updates, opt = tx.update(grads, state.opt_state[CODEC], trainable)
        params = {**state.params, **optax.apply_updates(trainable, updates)}
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                                  opt_state={**state.opt_state, CODEC: opt})
        return new_state, TrainMetrics(loss, jnp.mean(jnp.argmax(logits, -1) == batch.labels))

    return step


def gather_examples(data: Examples, indices: jax.Array) -> Examples:
    return Examples(data.images[indices], data.labels[indices])


def phases(system: System, recipe: Recipe, *, seed: int, num_examples: int,
           start_epoch: int = 0, fresh_optimizer: Callable[[Any, str], Any] | None = None
           ) -> list[Phase]:
    """The engine phases of epochs `[start_epoch, total_epochs)`: receiver, then codec.

    Each epoch's batches are a permutation derived from `(seed, epoch)`, the remainder dropped.
    With `recipe.reset_optimizer_each_epoch` each epoch starts from a fresh Adam state
    (`fresh_optimizer(state, phase)`, default `with_fresh_optimizer`), so a run resumed at an
    epoch boundary equals an uninterrupted one either way.
    """
    if recipe.batch_size > num_examples:
        raise ValueError(f"config.train.batch_size={recipe.batch_size}: larger than the "
                         f"{num_examples} training images")
    fresh = fresh_optimizer or (lambda state, phase: with_fresh_optimizer(state, recipe, phase))

    def batches(epoch: int) -> np.ndarray:
        return epoch_permutation(seed, epoch, num_examples, recipe.batch_size)

    steps = {RECEIVER: receiver_step(system, recipe), CODEC: codec_step(system, recipe)}
    bounds = {RECEIVER: (start_epoch, recipe.receiver_epochs),
              CODEC: (max(start_epoch, recipe.receiver_epochs), recipe.total_epochs)}
    result = []
    for name in (RECEIVER, CODEC):
        first, end = bounds[name]
        if first >= end:
            continue
        reset = ((lambda state, name=name: fresh(state, name))
                 if recipe.reset_optimizer_each_epoch else None)
        result.append(Phase(name, steps[name], range(first, end), batches, gather_examples,
                            start_epoch=reset))
    return result


def with_fresh_optimizer(state: TrainState, recipe: Recipe, phase: str) -> TrainState:
    """`state` with a new Adam state for `phase`."""
    return state.replace(opt_state={**state.opt_state,
                                    phase: optimizer_state(recipe, state.params, phase)})

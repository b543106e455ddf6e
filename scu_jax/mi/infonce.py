"""InfoNCE (van den Oord et al., 2018; Poole et al., 2019): a contrastive lower bound on I(x; z).

The critic is separable, `f(x, z) = g(x)ᵀ h(z)` (`SeparableCritic`), and the bound can never
exceed `log B` for B contrasted pairs. `infonce_fit` fuses many steps into one `lax.scan`
dispatch; `infonce_lower_bound` evaluates the trained critic with all N pairs of a data set
contrasted.

References:
  van den Oord et al., "Representation Learning with Contrastive Predictive Coding", 2018.
  Poole et al., "On Variational Bounds of Mutual Information", ICML 2019.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax
import jax
import jax.numpy as jnp
import optax

from scu_jax.mi._training import critic_optimizer, epoch_batches
from scu_jax.mi.critics import SeparableCritic

Array = jax.Array
Params = Any


@flax.struct.dataclass
class InfoNCEState:
    """What InfoNCE training carries between steps (a pytree; the last two fields are static)."""

    step: Array
    params: Params
    opt_state: optax.OptState
    critic: SeparableCritic = flax.struct.field(pytree_node=False)
    learning_rate: float = flax.struct.field(pytree_node=False)


def infonce_init(key: Array, x_dim: int, z_dim: int, *, hidden: Sequence[int] = (128, 128),
                 embedding_dim: int = 32, learning_rate: float = 1e-3) -> InfoNCEState:
    """Initialises a separable InfoNCE critic and its Adam optimiser.

    Args:
      key: PRNG key for the critic's parameters.
      x_dim: the width n_x of the flattened inputs.
      z_dim: the width d of the latents.
      hidden: widths of the hidden ReLU layers of `g` and `h`.
      embedding_dim: the width of `g(x)` and `h(z)`.
      learning_rate: Adam's learning rate.

    Returns:
      An `InfoNCEState` at step 0, critic and learning rate carried as static fields.
    """
    critic = SeparableCritic(hidden=tuple(hidden), embedding_dim=embedding_dim)
    params = critic.init(key, jnp.zeros((1, x_dim), jnp.float32),
                         jnp.zeros((1, z_dim), jnp.float32))
    opt_state = critic_optimizer(learning_rate).init(params)
    return InfoNCEState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state,
                        critic=critic, learning_rate=float(learning_rate))


def infonce_bound(scores: Array) -> Array:
    """The InfoNCE bound of a critic's score matrix.

    `I(x; z) ≥ log B + mean_i [S_ii − logsumexp_j S_ij]`, where `S_ij = f(x_i, z_j)` and the
    diagonal holds the joint pairs. Every summand is ≤ 0, so the bound saturates at `log B`:
    it can only measure MI well below the log of the number of contrasted pairs.

    Args:
      scores: `S`, shape (B, B).

    Returns:
      The bound in nats, a scalar.
    """
    batch_size = scores.shape[0]
    return jnp.log(batch_size) + jnp.mean(jnp.diagonal(scores) - jax.nn.logsumexp(scores, axis=1))


def infonce_step(state: InfoNCEState, x: Array, z: Array) -> tuple[InfoNCEState, Array]:
    """One ascent step on the InfoNCE bound of a batch (pure; `infonce_fit` scans it).

    Args:
      state: the current `InfoNCEState`.
      x: a batch of inputs, (B, n_x).
      z: the matching latents, (B, d); every other row serves as a negative.

    Returns:
      `(new_state, bound)`: the updated state and the batch's bound (nats, ≤ log B) under the
      parameters before the update.
    """

    def loss_fn(params):
        bound = infonce_bound(state.critic.apply(params, x, z))
        return -bound, bound

    grads, bound = jax.grad(loss_fn, has_aux=True)(state.params)
    optimizer = critic_optimizer(state.learning_rate)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    new_state = state.replace(step=state.step + 1,
                              params=optax.apply_updates(state.params, updates),
                              opt_state=opt_state)
    return new_state, bound


@functools.partial(jax.jit, static_argnames=("row_chunk",))
def infonce_lower_bound(state: InfoNCEState, x: Array, z: Array, *,
                        row_chunk: int = 512) -> Array:
    """The InfoNCE bound of a trained critic with ALL N pairs of a data set contrasted.

    Using every other sample as a negative makes the bound saturate at `log N` instead of the
    training `log B`, and tightens it. The N×N score matrix is never held whole: rows are
    processed `row_chunk` at a time.

    Args:
      state: a trained `InfoNCEState`.
      x: inputs, (N, n_x).
      z: latents, (N, d).
      row_chunk: rows of the score matrix computed at once.

    Returns:
      The bound in nats, a scalar.
    """
    x_embedded, z_embedded = state.critic.apply(state.params, x, z, method=SeparableCritic.embed)

    def row_term(row):
        x_row, z_row = row
        return x_row @ z_row - jax.nn.logsumexp(z_embedded @ x_row)

    terms = jax.lax.map(row_term, (x_embedded, z_embedded), batch_size=row_chunk)
    return jnp.log(x.shape[0]) + jnp.mean(terms)


@functools.partial(jax.jit, static_argnames=("num_steps", "batch_size"), donate_argnums=0)
def infonce_fit(state: InfoNCEState, x: Array, z: Array, key: Array, *, num_steps: int,
                batch_size: int) -> tuple[InfoNCEState, Array]:
    """Runs `num_steps` InfoNCE steps in one dispatch (a `lax.scan`), state donated.

    Minibatches are drawn epoch by epoch without replacement, so no negative duplicates its
    positive.

    Args:
      state: the starting `InfoNCEState`.
      x: the training inputs, (N, n_x), N ≥ batch_size.
      z: the training latents, (N, d).
      key: PRNG key for the batches.
      num_steps: how many steps to run.
      batch_size: B, pairs per step; the batch bound saturates at log B.

    Returns:
      `(state, bounds)`: the trained state and every step's batch bound, (num_steps,).
    """

    def body(carry, indices):
        return infonce_step(carry, x[indices], z[indices])

    return jax.lax.scan(body, state, epoch_batches(key, x.shape[0], num_steps, batch_size))

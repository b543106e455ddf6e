"""MINE (Belghazi et al., 2018): a Donsker-Varadhan lower bound on I(x; z), in nats.

A statistics network `T(x, z)` (`MineCritic`) is trained to maximise the bound with the paper's
moving-average gradient correction; `mine_fit` fuses many steps into one `lax.scan` dispatch and
`mine_lower_bound` evaluates the trained critic on a whole data set.

Reference:
  Belghazi et al., "Mutual Information Neural Estimation", ICML 2018.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax
import jax
import jax.numpy as jnp
import optax

from scu_jax.mi._training import critic_optimizer, epoch_batches
from scu_jax.mi.critics import MineCritic

Array = jax.Array
Params = Any


def _log_mean_exp(values: Array) -> Array:
    # log(mean(e^v)) through logsumexp: e^T overflows float32 once T exceeds ~88.
    return jax.nn.logsumexp(values) - jnp.log(values.size)


@flax.struct.dataclass
class MineState:
    """What MINE training carries between steps (a pytree; the last three fields are static).

    The moving average of `mean(e^T)` over marginal batches is stored as its logarithm,
    `log_ma`, so that it neither overflows nor underflows when the scores grow.
    """

    step: Array
    params: Params
    opt_state: optax.OptState
    log_ma: Array
    critic: MineCritic = flax.struct.field(pytree_node=False)
    learning_rate: float = flax.struct.field(pytree_node=False)
    ema_rate: float = flax.struct.field(pytree_node=False)

    @property
    def moving_average(self) -> Array:
        """The moving average `ma` of `mean(e^T_marginal)` itself."""
        return jnp.exp(self.log_ma)


def mine_init(key: Array, x_dim: int, z_dim: int, *, hidden: Sequence[int] = (128, 128),
              learning_rate: float = 1e-3, ema_rate: float = 0.01) -> MineState:
    """Initialises a MINE statistics network and its Adam optimiser.

    Args:
      key: PRNG key for the critic's parameters.
      x_dim: the width n_x of the flattened inputs.
      z_dim: the width d of the latents.
      hidden: widths of the critic's hidden ReLU layers.
      learning_rate: Adam's learning rate.
      ema_rate: α of the moving average `ma ← (1 − α)·ma + α·mean(e^T_marginal)`.

    Returns:
      A `MineState` at step 0. The critic and the hyperparameters travel in it as static
      fields: states built with equal arguments share one compiled step, never retracing.
    """
    if not 0.0 < ema_rate <= 1.0:
        raise ValueError(f"ema_rate must lie in (0, 1], got {ema_rate}")
    critic = MineCritic(hidden=tuple(hidden))
    params = critic.init(key, jnp.zeros((1, x_dim), jnp.float32),
                         jnp.zeros((1, z_dim), jnp.float32))
    opt_state = critic_optimizer(learning_rate).init(params)
    return MineState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state,
                     log_ma=jnp.zeros((), jnp.float32), critic=critic,
                     learning_rate=float(learning_rate), ema_rate=float(ema_rate))


def mine_step(state: MineState, x: Array, z: Array, key: Array) -> tuple[MineState, Array]:
    """One MINE step with the moving-average gradient correction (pure; `mine_fit` scans it).

    The Donsker-Varadhan bound on a batch is

      `DV = mean_i T(x_i, z_i) − log mean_i e^{T(x_i, z_π(i))}`,

    with `π` a random permutation, so that `(x_i, z_π(i))` are samples of the product of the
    marginals. Its minibatch gradient is biased: the `∇ log mean e^T` term divides by a batch
    estimate of `E_Q[e^T]`. Belghazi et al. replace that denominator by a moving average
    `ma ← (1 − α)·ma + α·mean(e^T_marginal)` and descend the surrogate

      `L = −(mean(T_joint) − mean(e^T_marginal) / stop_gradient(ma))`,

    whose gradient is `−∇mean(T_joint) + ∇mean(e^T_marginal) / ma`. Both `ma` and the quotient
    are computed in log space. On the first step `ma` starts at the batch's own value.

    Args:
      state: the current `MineState`.
      x: a batch of inputs, (B, n_x).
      z: the matching latents, (B, d).
      key: PRNG key for the permutation `π`.

    Returns:
      `(new_state, dv)`: the updated state and the DV bound of the batch (nats) under the
      parameters before the update.
    """
    batch_size = x.shape[0]
    z_marginal = z[jax.random.permutation(key, batch_size)]
    both_x = jnp.concatenate([x, x], axis=0)
    both_z = jnp.concatenate([z, z_marginal], axis=0)

    def loss_fn(params):
        scores = state.critic.apply(params, both_x, both_z)
        mean_joint = jnp.mean(scores[:batch_size])
        log_mean_exp_marginal = _log_mean_exp(scores[batch_size:])
        batch_log_ma = jax.lax.stop_gradient(log_mean_exp_marginal)
        previous_log_ma = jnp.where(state.step == 0, batch_log_ma, state.log_ma)
        log_ma = jnp.logaddexp(jnp.log1p(-state.ema_rate) + previous_log_ma,
                               jnp.log(state.ema_rate) + batch_log_ma)
        surrogate = -(mean_joint - jnp.exp(log_mean_exp_marginal - log_ma))
        return surrogate, (mean_joint - log_mean_exp_marginal, log_ma)

    grads, (dv, log_ma) = jax.grad(loss_fn, has_aux=True)(state.params)
    optimizer = critic_optimizer(state.learning_rate)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    new_state = state.replace(step=state.step + 1,
                              params=optax.apply_updates(state.params, updates),
                              opt_state=opt_state, log_ma=log_ma)
    return new_state, dv


@functools.partial(jax.jit, static_argnames=("num_permutations",))
def mine_lower_bound(state: MineState, x: Array, z: Array, key: Array, *,
                     num_permutations: int = 8) -> Array:
    """The Donsker-Varadhan bound `E_P[T] − log E_Q[e^T]` of a trained critic on a whole data set.

    `E_P` averages over the N pairs `(x_i, z_i)`; `E_Q` over `num_permutations` × N shuffled
    pairs `(x_i, z_π(i))`, which lowers the variance of the log-mean-exp term. The estimate is a
    lower bound on I(x; z) up to that term's (small, negative for large N) Jensen bias. Evaluate
    on data the critic was not trained on: on its training data an overfitted critic
    overestimates.

    Args:
      state: a trained `MineState`.
      x: inputs, (N, n_x).
      z: latents, (N, d).
      key: PRNG key for the permutations.
      num_permutations: how many shuffles of `z` estimate `E_Q`.

    Returns:
      The bound in nats, a scalar.
    """
    critic, params = state.critic, state.params
    mean_joint = jnp.mean(critic.apply(params, x, z))

    def marginal_scores(permutation_key):
        return critic.apply(params, x, z[jax.random.permutation(permutation_key, x.shape[0])])

    # One permutation at a time keeps memory at O(N), not O(num_permutations · N).
    scores = jax.lax.map(marginal_scores, jax.random.split(key, num_permutations))
    return mean_joint - _log_mean_exp(scores)


@functools.partial(jax.jit, static_argnames=("num_steps", "batch_size"), donate_argnums=0)
def mine_fit(state: MineState, x: Array, z: Array, key: Array, *, num_steps: int,
             batch_size: int) -> tuple[MineState, Array]:
    """Runs `num_steps` MINE steps in one dispatch (a `lax.scan`), state donated.

    Minibatches are drawn epoch by epoch without replacement from the device-resident `(x, z)`.

    Args:
      state: the starting `MineState`.
      x: the training inputs, (N, n_x), N ≥ batch_size.
      z: the training latents, (N, d).
      key: PRNG key for batches and permutations.
      num_steps: how many steps to run.
      batch_size: B, pairs per step.

    Returns:
      `(state, dv)`: the trained state and the batch DV bounds of every step, (num_steps,).
    """

    batch_key, permutation_key = jax.random.split(key)
    batches = epoch_batches(batch_key, x.shape[0], num_steps, batch_size)

    def body(carry, batch):
        indices, step_key = batch
        return mine_step(carry, x[indices], z[indices], step_key)

    return jax.lax.scan(body, state, (batches, jax.random.split(permutation_key, num_steps)))

"""Mutual-information estimates of I(x; z) between inputs and encoder latents, in nats.

SCU reports how much the encoder's latent `z` still tells about its input `x` on the erased data
D_e and the remaining data D_r, before and after unlearning. Three estimates are provided, all in
nats (natural logarithm):

* MINE (Belghazi et al., 2018): a Donsker-Varadhan lower bound maximised over a statistics
  network `T(x, z)`, trained with the paper's moving-average gradient correction.
* InfoNCE (van den Oord et al., 2018; Poole et al., 2019): a contrastive lower bound with a
  separable critic `f(x, z) = g(x)ᵀ h(z)`; it can never exceed `log B` for B contrasted pairs.
* The variational upper bound `E_x KL(q(z|x) ‖ N(0, I))` read directly off a Gaussian encoder.

`x` are flattened inputs (N, n_x) and `z` latents (N, d). Every step is a pure function; the
`*_train_step` functions are jitted with the state donated, and `mine_fit` / `infonce_fit` fuse
many steps into one dispatch with `jax.lax.scan`. The `estimate_*` helpers are deterministic for a
given key.

References:
  Belghazi et al., "Mutual Information Neural Estimation", ICML 2018.
  van den Oord et al., "Representation Learning with Contrastive Predictive Coding", 2018.
  Poole et al., "On Variational Bounds of Mutual Information", ICML 2019.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

Array = jax.Array
Params = Any

# A feature (a border pixel) that is constant over the training data is only centred, not
# scaled: dividing by its ~0 spread would blow up any held-out sample where it is not constant.
_STD_FLOOR = 1e-6


class MLP(nn.Module):
    """Dense/ReLU stack with a linear last layer.

    Attributes:
      features: widths of every layer; the last one is the output width and has no ReLU.
    """

    features: Sequence[int]

    @nn.compact
    def __call__(self, inputs: Array) -> Array:
        hidden = inputs
        for width in self.features[:-1]:
            hidden = nn.relu(nn.Dense(width)(hidden))
        return nn.Dense(self.features[-1])(hidden)


class MineCritic(nn.Module):
    """The MINE statistics network `T(x, z) = MLP(concat(x, z))`, one score per pair.

    Attributes:
      hidden: widths of the hidden ReLU layers.
    """

    hidden: Sequence[int] = (128, 128)

    @nn.compact
    def __call__(self, x: Array, z: Array) -> Array:
        """Scores the pairs `(x_i, z_i)`.

        Args:
          x: inputs, (B, n_x).
          z: latents, (B, d).

        Returns:
          `T(x_i, z_i)`, shape (B,).
        """
        pairs = jnp.concatenate([x, z], axis=-1)
        return MLP((*self.hidden, 1))(pairs)[..., 0]


class SeparableCritic(nn.Module):
    """The separable critic `f(x, z) = g(x)ᵀ h(z)` of InfoNCE, scoring all B×B pairs at once.

    Separable critics cost two MLP passes for B² scores, where a concat critic would need B²
    passes; Poole et al. (2019) find them as tight as concat critics on Gaussian benchmarks.

    Attributes:
      hidden: widths of the hidden ReLU layers of both `g` and `h`.
      embedding_dim: the width of `g(x)` and `h(z)`.
    """

    hidden: Sequence[int] = (128, 128)
    embedding_dim: int = 32

    def setup(self):
        self.x_embedding = MLP((*self.hidden, self.embedding_dim))
        self.z_embedding = MLP((*self.hidden, self.embedding_dim))

    def embed(self, x: Array, z: Array) -> tuple[Array, Array]:
        """Returns `(g(x), h(z))`, shapes (B, embedding_dim) each."""
        return self.x_embedding(x), self.z_embedding(z)

    def __call__(self, x: Array, z: Array) -> Array:
        """Returns the score matrix `S[i, j] = g(x_i)ᵀ h(z_j)`, shape (B, B)."""
        x_embedded, z_embedded = self.embed(x, z)
        return x_embedded @ z_embedded.T


def _optimizer(learning_rate: float) -> optax.GradientTransformation:
    # Rebuilt from the static learning rate inside each step rather than stored in the state:
    # states with equal hyperparameters then share one treedef and one compiled program, where
    # a stored optax object (fresh closures per construction) would force a recompile.
    return optax.adam(learning_rate)


def _epoch_batches(key: Array, num_samples: int, num_steps: int, batch_size: int) -> Array:
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


def _log_mean_exp(values: Array) -> Array:
    # log(mean(e^v)) through logsumexp: e^T overflows float32 once T exceeds ~88.
    return jax.nn.logsumexp(values) - jnp.log(values.size)


# ---------------------------------------------------------------------------------------------
# MINE
# ---------------------------------------------------------------------------------------------


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
    opt_state = _optimizer(learning_rate).init(params)
    return MineState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state,
                     log_ma=jnp.zeros((), jnp.float32), critic=critic,
                     learning_rate=float(learning_rate), ema_rate=float(ema_rate))


def mine_step(state: MineState, x: Array, z: Array, key: Array) -> tuple[MineState, Array]:
    """One MINE step with the moving-average gradient correction (pure; see `mine_train_step`).

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
    optimizer = _optimizer(state.learning_rate)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    new_state = state.replace(step=state.step + 1,
                              params=optax.apply_updates(state.params, updates),
                              opt_state=opt_state, log_ma=log_ma)
    return new_state, dv


mine_train_step = jax.jit(mine_step, donate_argnums=0)
mine_train_step.__doc__ = "`mine_step` jitted with the state donated."


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
    batches = _epoch_batches(batch_key, x.shape[0], num_steps, batch_size)

    def body(carry, batch):
        indices, step_key = batch
        return mine_step(carry, x[indices], z[indices], step_key)

    return jax.lax.scan(body, state, (batches, jax.random.split(permutation_key, num_steps)))


# ---------------------------------------------------------------------------------------------
# InfoNCE
# ---------------------------------------------------------------------------------------------


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
    opt_state = _optimizer(learning_rate).init(params)
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
    """One ascent step on the InfoNCE bound of a batch (pure; see `infonce_train_step`).

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
    optimizer = _optimizer(state.learning_rate)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    new_state = state.replace(step=state.step + 1,
                              params=optax.apply_updates(state.params, updates),
                              opt_state=opt_state)
    return new_state, bound


infonce_train_step = jax.jit(infonce_step, donate_argnums=0)
infonce_train_step.__doc__ = "`infonce_step` jitted with the state donated."


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

    return jax.lax.scan(body, state, _epoch_batches(key, x.shape[0], num_steps, batch_size))


# ---------------------------------------------------------------------------------------------
# Convenience estimators
# ---------------------------------------------------------------------------------------------


def _standardize(train: Array, evaluation: Array) -> tuple[Array, Array]:
    # MI is invariant under invertible per-feature affine maps, so z-scoring with the training
    # statistics changes nothing in I(x; z) but puts pixels in [0, 1] and latents of any scale
    # on the same footing for the critic's optimiser.
    mean = jnp.mean(train, axis=0)
    std = jnp.std(train, axis=0)
    std = jnp.where(std > _STD_FLOOR, std, 1.0)
    return (train - mean) / std, (evaluation - mean) / std


def _split(key: Array, x: Array, z: Array, eval_fraction: float, min_train: int):
    """Shuffles (x, z) and splits off `eval_fraction` of it for evaluation (standardised)."""
    if x.ndim != 2 or z.ndim != 2 or x.shape[0] != z.shape[0]:
        raise ValueError(f"expected x (N, n_x) and z (N, d) with equal N, got {x.shape}, {z.shape}")
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must lie in [0, 1), got {eval_fraction}")
    num_samples = x.shape[0]
    num_eval = math.ceil(eval_fraction * num_samples)
    if num_samples - num_eval < min_train:
        raise ValueError(f"{num_samples - num_eval} training samples; need at least {min_train}")
    order = jax.random.permutation(key, num_samples)
    x = jnp.asarray(x, jnp.float32)[order]
    z = jnp.asarray(z, jnp.float32)[order]
    # Without a held-out part the critic is evaluated on the data it was trained on.
    train_x, train_z = x[num_eval:], z[num_eval:]
    eval_x, eval_z = (x[:num_eval], z[:num_eval]) if num_eval else (train_x, train_z)
    train_x, eval_x = _standardize(train_x, eval_x)
    train_z, eval_z = _standardize(train_z, eval_z)
    return train_x, train_z, eval_x, eval_z


def estimate_mine(key: Array, x: Array, z: Array, *, steps: int = 2000, batch_size: int = 256,
                  hidden: Sequence[int] = (128, 128), learning_rate: float = 1e-3,
                  ema_rate: float = 0.01, eval_fraction: float = 0.2,
                  num_permutations: int = 8) -> float:
    """Estimates I(x; z) in nats with MINE (Belghazi et al., 2018).

    The data are shuffled and `eval_fraction` of them held out; both parts are z-scored per
    feature with the training statistics (MI is unchanged by this). A `MineCritic` is trained
    for `steps` bias-corrected steps on the rest, fused into one `lax.scan` dispatch, and the
    result is `mine_lower_bound` on the held-out part: a Donsker-Varadhan bound that an
    overfitted critic cannot inflate (with `eval_fraction=0` it is evaluated on the training
    data instead, which overestimates on small data sets).

    Args:
      key: PRNG key; the same key gives the same estimate.
      x: inputs, (N, n_x).
      z: latents, (N, d).
      steps: training steps.
      batch_size: pairs per training step.
      hidden: widths of the critic's hidden layers.
      learning_rate: Adam's learning rate.
      ema_rate: α of the moving average of `mean(e^T_marginal)`.
      eval_fraction: share of the data held out for the final evaluation.
      num_permutations: shuffles of `z` that estimate `E_Q[e^T]` in the evaluation.

    Returns:
      The estimate in nats, a Python float.
    """
    split_key, init_key, fit_key, eval_key = jax.random.split(key, 4)
    train_x, train_z, eval_x, eval_z = _split(split_key, x, z, eval_fraction,
                                              min_train=batch_size)
    state = mine_init(init_key, train_x.shape[1], train_z.shape[1], hidden=hidden,
                      learning_rate=learning_rate, ema_rate=ema_rate)
    state, _ = mine_fit(state, train_x, train_z, fit_key, num_steps=steps, batch_size=batch_size)
    return float(mine_lower_bound(state, eval_x, eval_z, eval_key,
                                  num_permutations=num_permutations))


def estimate_infonce(key: Array, x: Array, z: Array, *, steps: int = 2000, batch_size: int = 512,
                     hidden: Sequence[int] = (128, 128), embedding_dim: int = 32,
                     learning_rate: float = 1e-3, eval_fraction: float = 0.2) -> float:
    """Estimates I(x; z) in nats with the InfoNCE bound and a separable critic.

    Same protocol as `estimate_mine`: shuffle, hold out `eval_fraction`, z-score with the
    training statistics, train with minibatches of `batch_size` in one `lax.scan` dispatch, then
    evaluate `infonce_lower_bound` on the held-out part with all of its pairs contrasted. The
    result can never exceed `log(N_eval)` (and training stalls near `log(batch_size)`): choose
    both well above the MI you expect, or the estimate saturates.

    Args:
      key: PRNG key; the same key gives the same estimate.
      x: inputs, (N, n_x).
      z: latents, (N, d).
      steps: training steps.
      batch_size: pairs per training step (the training bound saturates at its log).
      hidden: widths of the hidden layers of `g` and `h`.
      embedding_dim: the width of `g(x)` and `h(z)`.
      learning_rate: Adam's learning rate.
      eval_fraction: share of the data held out for the final evaluation.

    Returns:
      The estimate in nats, a Python float.
    """
    split_key, init_key, fit_key = jax.random.split(key, 3)
    train_x, train_z, eval_x, eval_z = _split(split_key, x, z, eval_fraction,
                                              min_train=batch_size)
    state = infonce_init(init_key, train_x.shape[1], train_z.shape[1], hidden=hidden,
                         embedding_dim=embedding_dim, learning_rate=learning_rate)
    state, _ = infonce_fit(state, train_x, train_z, fit_key, num_steps=steps,
                           batch_size=batch_size)
    return float(infonce_lower_bound(state, eval_x, eval_z))


# ---------------------------------------------------------------------------------------------
# Variational upper bound
# ---------------------------------------------------------------------------------------------


def variational_upper_bound(mu: Array, logvar: Array) -> Array:
    """The upper bound `I(x; z) ≤ E_x KL(q(z|x) ‖ N(0, I))` of a Gaussian encoder, in nats.

    `I(x; z) = E_x KL(q(z|x) ‖ q(z)) = E_x KL(q(z|x) ‖ p(z)) − KL(q(z) ‖ p(z))` for any prior
    `p`, so the KL to `p = N(0, I)` exceeds the MI by exactly `KL(q(z) ‖ N(0, I))` and equals it
    when the aggregate posterior `q(z)` is the prior. Per sample the KL is summed over latent
    dimensions,

      `KL_i = −½ Σ_k (1 + logvar_ik − μ_ik² − e^{logvar_ik})`,

    and averaged over samples. (Contrast `losses.kl_to_prior`, which averages over dimensions.)
    For the noisy channel `ẑ = z + n` the same bound holds for I(x; ẑ) by data processing.

    Args:
      mu: posterior means, (N, d).
      logvar: posterior log-variances log σ², (N, d).

    Returns:
      A scalar, in nats.

    References:
      Alemi et al., "Deep Variational Information Bottleneck", ICLR 2017.
    """
    mu = jnp.asarray(mu, jnp.float32)
    logvar = jnp.asarray(logvar, jnp.float32)
    per_sample = -0.5 * jnp.sum(1.0 + logvar - jnp.square(mu) - jnp.exp(logvar),
                                axis=tuple(range(1, mu.ndim)))
    return jnp.mean(per_sample)

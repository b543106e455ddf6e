"""One-call MI estimates of a data set: shuffle, hold out, standardise, train a critic, evaluate.

`estimate_mine` and `estimate_infonce` return a Python float in nats and are deterministic for a
given key.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp

from scu_jax.mi.infonce import infonce_fit, infonce_init, infonce_lower_bound
from scu_jax.mi.mine import mine_fit, mine_init, mine_lower_bound

Array = jax.Array

# A feature (a border pixel) that is constant over the training data is only centred, not
# scaled: dividing by its ~0 spread would blow up any held-out sample where it is not constant.
_STD_FLOOR = 1e-6


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

    Example:
      >>> # Correlated Gaussians, ρ = 0.9: I = −½·log(1 − ρ²) = 0.83 nats.
      >>> x = jax.random.normal(key, (2000, 1))
      >>> noisy = 0.9 * x + jnp.sqrt(1 - 0.9 ** 2) * jax.random.normal(jax.random.PRNGKey(1), x.shape)
      >>> 0.7 < scu_jax.estimate_mine(key, x, noisy, steps=200) < 0.95
      True
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

    Example:
      >>> # Correlated Gaussians, ρ = 0.9: I = −½·log(1 − ρ²) = 0.83 nats.
      >>> x = jax.random.normal(key, (2000, 1))
      >>> noisy = 0.9 * x + jnp.sqrt(1 - 0.9 ** 2) * jax.random.normal(jax.random.PRNGKey(1), x.shape)
      >>> 0.7 < scu_jax.estimate_infonce(key, x, noisy, steps=200) < 0.95
      True
    """
    split_key, init_key, fit_key = jax.random.split(key, 3)
    train_x, train_z, eval_x, eval_z = _split(split_key, x, z, eval_fraction,
                                              min_train=batch_size)
    state = infonce_init(init_key, train_x.shape[1], train_z.shape[1], hidden=hidden,
                         embedding_dim=embedding_dim, learning_rate=learning_rate)
    state, _ = infonce_fit(state, train_x, train_z, fit_key, num_steps=steps,
                           batch_size=batch_size)
    return float(infonce_lower_bound(state, eval_x, eval_z))

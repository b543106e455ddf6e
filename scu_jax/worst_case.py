"""Worst-case forget sets: the K training samples whose forgetting is hardest for a method.

Random forget sets flatter every method: their samples look like the rest of the data, so a
model that never erased them reads them almost as the original does (Fan et al., "Challenging
Forgets: Unveiling the Worst-Case Forget Sets in Machine Unlearning", ECCV 2024). Their
bi-level selection, adapted to the codec:

* upper level: weights w ∈ [0, 1]^N on the N candidate training samples, Σ w = K, minimising
  `H(w) = Σ_i w_i · (ℓ_i(θ_T(w)) − ℓ_i(θ_0)) / K`, the mean rise of the weighted samples' loss
  ℓ_i (the per-image reconstruction MSE) that unlearning them brings: where it stays small, the
  codec still reconstructs them after unlearning, i.e. it has not forgotten them;
* lower level: `θ_T(w)`, T plain gradient steps of size η from the trained θ_0 on the method's
  objective with the samples weighted by w (erased) and 1 − w (remaining):
  - `scu`: SCU's `L_unl` per sample, `Σ w_i (λ_kl · KL(q_θ(z|x_i) ‖ q_θ0(z|x_i)) − β_u · MSE_i)
    / K`, plus ρ times the codec loss `β · KL_prior + MSE` weighted by 1 − w (the contrastive
    term and the adaptive weights a, b are ratios over whole sets and are left out: they do not
    split per sample);
  - `finetune`: the codec loss weighted by 1 − w (forgetting by training on the rest);
  - `ascent`: `−Σ w_i MSE_i / K` (gradient ascent on the erased samples).

`∇_w H` runs through the T unrolled steps (`jax.grad`, one compiled program); each iteration
takes a projected gradient step on w (the projection onto {0 ≤ w ≤ 1, Σ w = K} by bisection on
a shift), and the set is the K largest weights at the end. The start is K/N plus a seeded
perturbation, and every lower step's noise draws are fixed by `seed`: the set depends only on its
inputs. The codec runs in evaluation mode (BatchNorm's running averages) throughout.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from scu_jax.models import System, to_unit_interval

WORST_CASE_METHODS = ("scu", "finetune", "ascent")


class WorstCase(NamedTuple):
    """A worst-case forget set and how it was found.

    Attributes:
      ids: the K chosen training rows, sorted.
      weights: the final weights w over the candidates, (N,).
      hardness: H(w) after each iteration (the mean loss rise of the weighted set; falling).
      candidates: the training rows the weights are over (all rows, or a seeded pool).

    Example:
      >>> found = scu_jax.worst_case_set(system, state.params, {}, images, 2, iterations=1)
      >>> found.ids.shape, found.weights.shape, len(found.hardness)
      ((2,), (16,), 1)
    """

    ids: np.ndarray
    weights: np.ndarray
    hardness: np.ndarray
    candidates: np.ndarray


def project_to_budget(w: jax.Array, count: float, *, iterations: int = 50) -> jax.Array:
    """The Euclidean projection of `w` onto {0 ≤ w ≤ 1, Σ w = count}: `clip(w − τ, 0, 1)`
    with the shift τ found by bisection.

    Example:
      >>> w = scu_jax.project_to_budget(jnp.array([0.9, 0.8, 0.1, -0.2]), 2.0)
      >>> [round(float(v), 3) for v in w], round(float(w.sum()), 3)
      ([0.967, 0.867, 0.167, 0.0], 2.0)
    """
    low, high = jnp.min(w) - 1.0, jnp.max(w)

    def bisect(_, bounds):
        low, high = bounds
        middle = 0.5 * (low + high)
        over = jnp.clip(w - middle, 0.0, 1.0).sum() > count
        return jnp.where(over, middle, low), jnp.where(over, high, middle)

    low, high = jax.lax.fori_loop(0, iterations, bisect, (low, high))
    return jnp.clip(w - 0.5 * (low + high), 0.0, 1.0)


def _per_image(system: System, params, batch_stats, x: jax.Array, key: jax.Array):
    """Per image: the posterior, the reconstruction MSE and the KL to the prior (means over
    elements, as the codec's losses take them)."""
    latent_key, channel_key = jax.random.split(key)
    out = system.codec.apply({"params": params["codec"], "batch_stats": batch_stats}, x,
                             train=False, rngs={"latent": latent_key, "channel": channel_key})
    mse = jnp.mean(jnp.square(out.x_hat - x).reshape(len(x), -1), axis=1)
    kl_prior = -0.5 * jnp.mean(1.0 + out.logvar - out.mu ** 2 - jnp.exp(out.logvar), axis=1)
    return out, mse, kl_prior


def _lower_objective(system, method: str, hyper: dict[str, float], original, params,
                     batch_stats, x, w, count, key):
    out, mse, kl_prior = _per_image(system, params, batch_stats, x, key)
    rest = jnp.maximum(len(x) - count, 1.0)
    utility = jnp.sum((1.0 - w) * (hyper["beta"] * kl_prior + mse)) / rest
    if method == "finetune":
        return utility
    if method == "ascent":
        return -jnp.sum(w * mse) / count
    mu_o, logvar_o = jax.lax.stop_gradient(original)
    kl_eo = 0.5 * jnp.mean(logvar_o - out.logvar + (jnp.exp(out.logvar) + (out.mu - mu_o) ** 2)
                           / jnp.exp(logvar_o) - 1.0, axis=1)
    forget = jnp.sum(w * (hyper["lambda_kl"] * kl_eo - hyper["beta_u"] * mse)) / count
    return forget + hyper["rho"] * utility


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _hardness_and_grad(system: System, method: str, steps: int, hyper, params, batch_stats,
                       x, w, count, key):
    """H(w) and ∇_w H through `steps` unrolled lower-level steps (module docstring)."""
    before = _per_image(system, params, batch_stats, x, key)
    original = (before[0].mu, before[0].logvar)

    def hardness(w):
        def step(theta, index):
            grads = jax.grad(lambda t: _lower_objective(
                system, method, hyper, original, t, batch_stats, x, w, count,
                jax.random.fold_in(key, index)))(theta)
            return jax.tree.map(lambda p, g: p - hyper["step_size"] * g, theta, grads), None

        trainable = {"codec": params["codec"]}
        unlearned, _ = jax.lax.scan(step, trainable, jnp.arange(1, steps + 1))
        after = _per_image(system, {**params, **unlearned}, batch_stats, x, key)[1]
        return jnp.sum(w * (after - before[1])) / count

    return jax.value_and_grad(hardness)(w)


def worst_case_set(system: System, params, batch_stats, images: np.ndarray, count: int, *,
                   method: str = "scu", seed: int = 0, iterations: int = 30,
                   lower_steps: int = 3, step_size: float = 1e-2, learning_rate: float = 0.1,
                   pool: int = 0, lambda_kl: float = 1.0, beta_u: float = 0.1, rho: float = 1.0,
                   beta: float = 1e-4) -> WorstCase:
    """The `count` training samples whose forgetting is hardest for `method` (module docstring).

    Args:
      system, params, batch_stats: the trained system (θ_0).
      images: the training images (uint8 or [0, 1]), rows = training indices.
      count: K, the size of the set (1 ≤ K < number of candidates).
      method: the lower level's method: "scu", "finetune" or "ascent".
      seed: the start's perturbation, the noise draws and the candidate pool.
      iterations: upper-level projected gradient steps.
      lower_steps, step_size: T and η of the lower level.
      learning_rate: the upper level's step on w (the gradient is scaled to unit max-norm).
      pool: candidates: a seeded subsample of this many rows (0: every row).
      lambda_kl, beta_u, rho, beta: SCU's weights and the codec's β (the config's).

    Returns:
      A `WorstCase`; `ids` are training rows.

    Example:
      >>> found = scu_jax.worst_case_set(system, state.params, {}, images, 4, iterations=3)
      >>> len(found.ids), bool(found.hardness[-1] <= found.hardness[0])
      (4, True)
    """
    if method not in WORST_CASE_METHODS:
        raise ValueError(f"method={method!r}: must be one of {', '.join(WORST_CASE_METHODS)}")
    total = len(images)
    candidates = (np.sort(np.random.default_rng([seed, 5]).choice(total, pool, replace=False))
                  if 0 < pool < total else np.arange(total))
    if not 1 <= count < len(candidates):
        raise ValueError(f"a worst-case set of {count} samples out of {len(candidates)} "
                         "candidates: it needs 1 or more and fewer than the candidates")
    for name, value in (("iterations", iterations), ("lower_steps", lower_steps)):
        if value < 1:
            raise ValueError(f"{name}={value}: must be 1 or more")
    x = to_unit_interval(jnp.asarray(images[candidates]))
    hyper = {"lambda_kl": lambda_kl, "beta_u": beta_u, "rho": rho, "beta": beta,
             "step_size": step_size}
    rng = np.random.default_rng([seed, 6])
    w = project_to_budget(jnp.asarray(count / len(candidates)
                                      + 0.01 * rng.standard_normal(len(candidates)), jnp.float32),
                          float(count))
    key = jax.random.PRNGKey(seed)
    history = []
    for _ in range(iterations):
        value, grad = _hardness_and_grad(system, method, int(lower_steps), hyper, params,
                                         batch_stats, x, w, float(count), key)
        history.append(float(value))
        w = project_to_budget(w - learning_rate * grad / (jnp.max(jnp.abs(grad)) + 1e-12),
                              float(count))
    weights = np.asarray(w)
    chosen = np.lexsort((np.arange(len(weights)), -weights))[:count]
    return WorstCase(np.sort(candidates[chosen]), weights, np.asarray(history), candidates)


def set_hardness(system: System, params, batch_stats, images: np.ndarray, ids, *,
                 method: str = "scu", seed: int = 0, lower_steps: int = 3, step_size: float = 1e-2,
                 lambda_kl: float = 1.0, beta_u: float = 0.1, rho: float = 1.0,
                 beta: float = 1e-4) -> float:
    """H of one set (w its indicator over every training row): the mean rise of its samples'
    reconstruction MSE after the lower level's unlearning of it, as `worst_case_set` scores sets
    (the smaller, the harder to forget).

    Example:
      >>> hardest = scu_jax.worst_case_set(system, state.params, {}, images, 4, iterations=3)
      >>> h = scu_jax.set_hardness(system, state.params, {}, images, hardest.ids)
      >>> bool(h <= scu_jax.set_hardness(system, state.params, {}, images, [0, 1, 2, 3]) + 1e-3)
      True
    """
    ids = np.asarray(ids, np.int64)
    w = jnp.zeros(len(images), jnp.float32).at[ids].set(1.0)
    hyper = {"lambda_kl": lambda_kl, "beta_u": beta_u, "rho": rho, "beta": beta,
             "step_size": step_size}
    value, _ = _hardness_and_grad(system, method, int(lower_steps), hyper, params, batch_stats,
                                  to_unit_interval(jnp.asarray(images)), w, float(len(ids)),
                                  jax.random.PRNGKey(seed))
    return float(value)


def random_set(total: int, count: int, seed: int) -> np.ndarray:
    """A seeded random set of `count` of `total` training rows, sorted: the worst case's
    baseline of the same size."""
    return np.sort(np.random.default_rng([seed, 7]).choice(total, count, replace=False))


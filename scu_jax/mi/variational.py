"""The variational upper bound on I(x; z) of a Gaussian encoder, read off its posteriors."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


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

    Example:
      >>> float(scu_jax.variational_upper_bound(jnp.ones((4, 20)), jnp.zeros((4, 20))))   # ½·20
      10.0
    """
    mu = jnp.asarray(mu, jnp.float32)
    logvar = jnp.asarray(logvar, jnp.float32)
    per_sample = -0.5 * jnp.sum(1.0 + logvar - jnp.square(mu) - jnp.exp(logvar),
                                axis=tuple(range(1, mu.ndim)))
    return jnp.mean(per_sample)
